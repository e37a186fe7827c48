"""A real browser (Debian's headless Chromium) speaking MQTT over WebSocket to the broker.

The page (served by a tiny twisted.web resource of the test) holds a few lines of
plain JavaScript that encode CONNECT and SUBSCRIBE and decode CONNACK, SUBACK and
PUBLISH; it subscribes, a TCP client publishes, and the page writes the message
into its DOM, which ``chromium --dump-dom`` prints.  The page's load event is held
back (a hidden iframe the test answers last) until the message is shown, so the
dump happens after it.  scripts/test installs chromium.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from mqtt_twisted.codec import ConnAck, Connect, Publish
from tests.certs import temp_dir
from tests.pahoclient import connect_raw
from tests.securebroker import SecureBrokerTestCase, spawn, within

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>MQTT over WebSocket</title></head>
<body>
<p id="status">loading</p>
<p id="message"></p>
<iframe src="/hold" style="display:none"></iframe>
<script>
"use strict";
const status = (text) => { document.getElementById("status").textContent = text; };
const utf8 = (s) => Array.from(new TextEncoder().encode(s));
const str = (s) => { const b = utf8(s); return [b.length >> 8, b.length & 255, ...b]; };
const remaining = (n) => {
  const out = [];
  do { let d = n % 128; n = Math.floor(n / 128); if (n > 0) d |= 128; out.push(d); } while (n > 0);
  return out;
};
const packet = (first, body) => new Uint8Array([first, ...remaining(body.length), ...body]);

const ws = new WebSocket("__URL__", ["mqtt"]);
ws.binaryType = "arraybuffer";
let buffer = [];
ws.onopen = () => {
  status("open");
  // CONNECT: "MQTT", level 4, clean session, keep alive 60, client id "browser"
  ws.send(packet(0x10, [...str("MQTT"), 4, 0x02, 0, 60, ...str("browser")]));
};
ws.onmessage = (event) => {
  buffer = buffer.concat(Array.from(new Uint8Array(event.data)));
  for (;;) {  // every complete packet in the buffer
    let length = 0, multiplier = 1, i = 1, byte;
    do {
      if (i >= buffer.length) return;
      byte = buffer[i++]; length += (byte & 127) * multiplier; multiplier *= 128;
    } while (byte & 128);
    if (buffer.length < i + length) return;
    const type = buffer[0] >> 4, body = buffer.slice(i, i + length);
    buffer = buffer.slice(i + length);
    if (type === 2) {  // CONNACK
      if (body[1] !== 0) { status("refused " + body[1]); return; }
      status("connected");
      ws.send(packet(0x82, [0, 1, ...str("browser/#"), 0]));  // SUBSCRIBE, id 1, QoS 0
    } else if (type === 9) {  // SUBACK
      status("subscribed");
      fetch("/subscribed");
    } else if (type === 3) {  // PUBLISH, QoS 0
      const topicLength = (body[0] << 8) | body[1];
      const decode = (bytes) => new TextDecoder().decode(new Uint8Array(bytes));
      const topic = decode(body.slice(2, 2 + topicLength));
      document.getElementById("message").textContent =
        topic + " " + decode(body.slice(2 + topicLength));
      status("received");
      fetch("/done");
    }
  }
};
ws.onclose = (event) => status("closed " + event.code);
</script>
</body></html>
"""


class _Page(Resource):
    """The test page, and the three URLs it uses to say where it is."""

    isLeaf = True

    def __init__(self, page: str) -> None:
        super().__init__()
        self.page = page.encode()
        self.subscribed: Deferred[None] = Deferred()
        self.done: Deferred[None] = Deferred()
        self.held: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        path = request.path
        if path == b"/hold":
            self.held.append(request)
            return NOT_DONE_YET
        if path == b"/subscribed" and not self.subscribed.called:
            self.subscribed.callback(None)
        elif path == b"/done" and not self.done.called:
            self.done.callback(None)
        elif path == b"/":
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            return self.page
        return b""

    def release(self) -> None:
        """Answer the held iframe request: the page's load event can fire."""
        held, self.held = self.held, []
        for request in held:
            if not request.finished and not request._disconnected:
                request.write(b"ok")
                request.finish()


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("chromium not found: scripts/test installs Debian's chromium "
                         "(apt-get install chromium)")


class BrowserTests(SecureBrokerTestCase):
    """Headless Chromium against the ws adapter."""

    timeout = 90

    @inlineCallbacks
    def test_browser_subscribes_and_shows_a_tcp_publish(self) -> None:
        """A page in Chromium connects over ws (subprotocol mqtt), subscribes, and shows in
        its DOM a message that a TCP client publishes."""
        ws_port, tcp_port = yield self.start("ws=tcp:0:interface=127.0.0.1",
                                             "tcp:0:interface=127.0.0.1")
        page = _Page(PAGE.replace("__URL__", f"ws://127.0.0.1:{ws_port}/mqtt"))
        site = Site(page)
        site.noisy = False
        listening = yield TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(listening.stopListening)
        self.addCleanup(page.release)
        profile = temp_dir(self)
        browser = spawn(self, self.reactor, [
            chromium(), "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            "--no-default-browser-check", f"--user-data-dir={profile}",
            "--dump-dom", f"http://127.0.0.1:{listening.getHost().port}/",
        ], env={**os.environ, "HOME": profile}, path=profile)
        yield within(page.subscribed, self.reactor, 40,
                     f"the page to subscribe; chromium said:\n{browser.text}")
        publisher = yield connect_raw(self.reactor, tcp_port)
        self.addCleanup(publisher.abort)
        publisher.send(Connect("tcp-publisher", 4, True, 0))
        yield publisher.expect(ConnAck)
        publisher.send(Publish("browser/news", "héllo from TCP".encode(), 0, False, False, None))
        yield within(page.done, self.reactor, 20, f"the page to show it:\n{browser.text}")
        page.release()
        code = yield within(browser.ended, self.reactor, 30, "chromium to dump the page")
        self.assertEqual(code, 0, browser.text)
        self.assertIn('<p id="message">browser/news héllo from TCP</p>', browser.text)
        self.assertIn('<p id="status">received</p>', browser.text)
