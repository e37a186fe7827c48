// aedes on 127.0.0.1:PORT for bench/compare.py: `node bench/aedes_server.js PORT`.
// Defaults everywhere, except Nagle off on accepted sockets (as every broker in the
// comparison). aedes >= 1.0 is an ES module installed under bench/.aedes (or $AEDES_DIR),
// hence the dynamic import from this CommonJS script.
'use strict'
const net = require('node:net')
const path = require('node:path')
const { pathToFileURL } = require('node:url')

const port = Number(process.argv[2])
const dir = process.env.AEDES_DIR || path.join(__dirname, '.aedes')
const entry = pathToFileURL(path.join(dir, 'node_modules', 'aedes', 'aedes.js')).href

import(entry).then(async ({ Aedes }) => {
  const broker = await Aedes.createBroker()
  const server = net.createServer((socket) => {
    socket.setNoDelay(true)
    broker.handle(socket)
  })
  server.listen(port, '127.0.0.1', () => console.log(`aedes listening on 127.0.0.1:${port}`))
  process.on('SIGTERM', () => process.exit(0))
})
