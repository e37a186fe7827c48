"""The Redis store's Lua scripts: each store call that touches several keys is one
script, so that Redis applies it atomically.

Key names are passed in KEYS, except the retained-topic index nodes, which a script
derives from the prefix in ARGV[1] (so the retained scripts suit one Redis server or
a replicated one, not Redis Cluster).
"""

from __future__ import annotations

import hashlib
from typing import Any

#: A write to one of a session's keys, done only while the session exists, so that a
#: late write never resurrects a deleted session.  KEYS: session hash, target key;
#: ARGV: command, its arguments after the key.
_GUARDED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call(ARGV[1], KEYS[2], unpack(ARGV, 2))
"""

#: Replace a whole session.  KEYS: session, subs, out, qos2, sessions set; ARGV: client
#: id, then for each of the four keys a count followed by that many arguments.
_SAVE = """
local marks = {}
local old = redis.call('HGETALL', KEYS[1])
for m = 1, #old, 2 do
  if string.sub(old[m], 1, 2) == 'm:' then marks[#marks + 1] = old[m]; marks[#marks + 1] = old[m + 1] end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
local i = 2
for k = 1, 4 do
  local last = i + tonumber(ARGV[i])
  local cmd = 'HSET'
  if k == 4 then cmd = 'SADD' end
  local j = i + 1
  while j <= last do
    local upto = math.min(j + 999, last)
    redis.call(cmd, KEYS[k], unpack(ARGV, j, upto))
    j = upto + 1
  end
  i = last + 1
end
redis.call('SADD', KEYS[5], ARGV[1])
if #marks > 0 then redis.call('HSET', KEYS[1], unpack(marks)) end
return 1
"""

#: saveSessionInfo: the session hash's own fields, its marks and records kept; 0 when
#: the session is not stored (the store then saves it whole).  KEYS: session, sessions
#: set; ARGV: client id, then field, value pairs.
_INFO = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[1], 'will', 'owner')
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

#: storeOutbound for a delivery of a cluster stream entry: the outbound record, and
#: in the session hash the entry as the last one of that stream delivered into the
#: session (``m:STREAM``; kept by save), in one step.  KEYS: session, out; ARGV: seq,
#: record, mark field, entry id.
_MARKED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
return 1
"""

#: A batch of outbound-record writes (``_redisbatch``): per client, KEYS its session
#: and outbound hashes; ARGV its sent mark (empty: none) and a msgpack map of seq to
#: record (an empty record: remove it).  A client's part applies only while its session
#: exists, as a single guarded write would.
_BATCH = """
local function apply(cmd, key, list)
  local j = 1
  while j <= #list do
    local upto = math.min(j + 999, #list)
    redis.call(cmd, key, unpack(list, j, upto))
    j = upto + 1
  end
end
for k = 1, #KEYS, 2 do
  local a = k
  if redis.call('EXISTS', KEYS[k]) == 1 then
    local puts, removed = {}, {}
    for seq, record in pairs(cmsgpack.unpack(ARGV[a + 1])) do
      seq = string.format('%d', seq)
      if record == '' then
        removed[#removed + 1] = seq
      else
        puts[#puts + 1] = seq
        puts[#puts + 1] = record
      end
    end
    apply('HSET', KEYS[k + 1], puts)
    apply('HDEL', KEYS[k + 1], removed)
    if ARGV[a] ~= '' then redis.call('HSET', KEYS[k], 'sent', ARGV[a]) end
  end
end
return 1
"""

_DELETE = """
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return redis.call('SREM', KEYS[5], ARGV[1])
"""

#: One consistent snapshot of a session, packed into one reply (a single bulk string
#: parses far faster in txredisapi than a nested multi-bulk reply).
_LOAD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return cmsgpack.pack({redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]),
                      redis.call('HGETALL', KEYS[3]), redis.call('SMEMBERS', KEYS[4])})
"""

_LIST = """
return cmsgpack.pack(redis.call('SMEMBERS', KEYS[1]))
"""

#: The node of a topic prefix of depth d is ARGV[1] .. '/' .. level1 .. '/' .. level d
#: (the root is ARGV[1] itself), a set of the next levels below it.
_SET_RETAINED = """
local topic = ARGV[2]
redis.call('HSET', KEYS[1], topic, ARGV[3])
local path = ''
local start = 1
while true do
  local slash = string.find(topic, '/', start, true)
  local level
  if slash then level = string.sub(topic, start, slash - 1) else level = string.sub(topic, start) end
  redis.call('SADD', ARGV[1] .. path, level)
  path = path .. '/' .. level
  if not slash then return 1 end
  start = slash + 1
end
"""

#: Delete a retained message and prune the index nodes nothing is below any more.
_DELETE_RETAINED = """
local topic = ARGV[2]
if redis.call('HDEL', KEYS[1], topic) == 0 then return 0 end
local paths = {''}
local levels = {}
local start = 1
while true do
  local slash = string.find(topic, '/', start, true)
  local level
  if slash then level = string.sub(topic, start, slash - 1) else level = string.sub(topic, start) end
  levels[#levels + 1] = level
  paths[#paths + 1] = paths[#paths] .. '/' .. level
  if not slash then break end
  start = slash + 1
end
for d = #levels, 1, -1 do
  local path = paths[d + 1]
  if redis.call('EXISTS', ARGV[1] .. path) == 1 then break end
  if d < #levels and redis.call('HEXISTS', KEYS[1], string.sub(path, 2)) == 1 then break end
  redis.call('SREM', ARGV[1] .. paths[d], levels[d])
end
return 1
"""

#: Every retained message matching a filter, walking only the index nodes that can
#: match [MQTT-4.7]; wildcards at the first level skip '$' topics [MQTT-4.7.2-1].
_MATCH_RETAINED = """
local prefix = ARGV[1]
local levels = {}
local start = 1
while true do
  local slash = string.find(ARGV[2], '/', start, true)
  if slash then
    levels[#levels + 1] = string.sub(ARGV[2], start, slash - 1)
  else
    levels[#levels + 1] = string.sub(ARGV[2], start)
    break
  end
  start = slash + 1
end
local out = {}
local function add(path)
  local value = redis.call('HGET', KEYS[1], string.sub(path, 2))
  if value then out[#out + 1] = value end
end
local function children(path, depth)
  local names = redis.call('SMEMBERS', prefix .. path)
  if depth > 1 then return names end
  local kept = {}
  for _, name in ipairs(names) do
    if string.sub(name, 1, 1) ~= '$' then kept[#kept + 1] = name end
  end
  return kept
end
local function subtree(path)
  add(path)
  for _, name in ipairs(redis.call('SMEMBERS', prefix .. path)) do
    subtree(path .. '/' .. name)
  end
end
local function walk(path, depth)
  if depth > #levels then
    add(path)
    return
  end
  local level = levels[depth]
  if level == '#' then
    if depth > 1 then add(path) end
    for _, name in ipairs(children(path, depth)) do subtree(path .. '/' .. name) end
  elseif level == '+' then
    for _, name in ipairs(children(path, depth)) do walk(path .. '/' .. name, depth + 1) end
  elseif redis.call('SISMEMBER', prefix .. path, level) == 1 then
    walk(path .. '/' .. level, depth + 1)
  end
end
walk('', 1)
return cmsgpack.pack(out)
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: A write to one client's keys, made only by the node that owns the client (a
#: cluster, ``cluster/fence.py``): KEYS[1] the home hash, KEYS[2] the node's epoch
#: key; ARGV[1] the client id, ARGV[2] the node, ARGV[3] its epoch.  A node that was
#: adopted while it was cut off (its epoch key is gone) or that let the client go
#: (its home is another node) gets the error ``FENCED`` and writes nothing.  The
#: rest of KEYS and ARGV are the unfenced script's own.
_FENCE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] or redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return redis.error_reply('FENCED ' .. ARGV[2] .. ' does not own ' .. ARGV[1])
end
local K, A = {}, {}
for i = 3, #KEYS do K[i - 2] = KEYS[i] end
for i = 4, #ARGV do A[i - 3] = ARGV[i] end
local KEYS, ARGV = K, A
"""

#: A plain command on one of a client's keys (HDEL, SREM), fenced.
_PLAIN = """
return redis.call(ARGV[1], KEYS[1], unpack(ARGV, 2))
"""

SCRIPTS = {
    "guarded": _GUARDED, "save": _SAVE, "info": _INFO, "delete": _DELETE, "load": _LOAD, "list": _LIST,
    "set_retained": _SET_RETAINED, "delete_retained": _DELETE_RETAINED,
    "match_retained": _MATCH_RETAINED, "release": _RELEASE, "marked": _MARKED,
    "batch": _BATCH,
}
#: The fenced variants of the session writes (``RedisStore.fence``).
FENCED = {name: "fenced_" + name for name in ("guarded", "save", "info", "delete", "plain",
                                              "marked", "batch")}
SCRIPTS.update({FENCED[name]: _FENCE + body for name, body in (
    ("guarded", _GUARDED), ("save", _SAVE), ("info", _INFO), ("delete", _DELETE),
    ("plain", _PLAIN), ("marked", _MARKED), ("batch", _BATCH))})
SHAS = {name: hashlib.sha1(body.encode()).hexdigest().encode()
         for name, body in SCRIPTS.items()}

_COUNTS = [str(n).encode() for n in range(8)]


def call_script(link: Any, name: str, keys: tuple[bytes, ...],
                args: tuple[Any, ...] | list[Any], write: bool = True) -> Any:
    """Run script ``name`` on ``link`` (a :class:`~._redislink.Link`) by its SHA1;
    the link loads every script when it connects.  Returns the call's Deferred."""
    return link.call((b"EVALSHA", SHAS[name], _COUNTS[len(keys)], *keys, *args), write)
