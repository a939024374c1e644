"""The Lua scripts that change a variant's state in Redis: each one change, atomically.

Redis runs a script as one unit and writes its effects to the append-only file as one unit, so a
crash or restart never leaves a variant half moved (say, acknowledged but not marked done).
Scripts that act on a lease first check that the caller still owns it (``owned``): an agent
that stalled past its lease and lost it to another cannot undo the other's work.
"""

_OWNED = """
local function owned(stream, group, entry, consumer)
  local p = redis.call('XPENDING', stream, group, entry, entry, 1)
  return #p == 1 and p[1][2] == consumer
end
"""

# KEYS: queued, done, dead, stream 0..n-1   ARGV: error-key prefix, then (id, stream, v, h)...
ENQUEUE = """
local added, requeued, skipped = 0, 0, 0
for i = 2, #ARGV, 4 do
  local id = ARGV[i]
  if redis.call('SISMEMBER', KEYS[1], id) == 1 or redis.call('SISMEMBER', KEYS[2], id) == 1 then
    skipped = skipped + 1
  else
    if redis.call('SREM', KEYS[3], id) == 1 then
      requeued = requeued + 1
      redis.call('DEL', ARGV[1] .. id)
    else
      added = added + 1
    end
    redis.call('SADD', KEYS[1], id)
    redis.call('XADD', KEYS[4 + tonumber(ARGV[i + 1])], '*', 'v', ARGV[i + 2], 'h', ARGV[i + 3])
  end
end
return {added, requeued, skipped}
"""

# KEYS: queued, done, dead   ARGV: ids whose record is already in the store
MARK_STORED = """
local n = 0
for i = 1, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 0 then
    redis.call('SREM', KEYS[3], ARGV[i])
    n = n + redis.call('SADD', KEYS[2], ARGV[i])
  end
end
return n
"""

# KEYS: stream, queued, done, dead, errors, stats   ARGV: group, entry, id, images, found_stored
ACK = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('SREM', KEYS[2], ARGV[3])
redis.call('SREM', KEYS[4], ARGV[3])
redis.call('DEL', KEYS[5])
local new = redis.call('SADD', KEYS[3], ARGV[3])
if new == 1 then
  redis.call('HINCRBY', KEYS[6], 'images', ARGV[4])
  if ARGV[5] == '1' then redis.call('HINCRBY', KEYS[6], 'found_stored', 1) end
end
return new
"""

# KEYS: stream   ARGV: group, entry, consumer, v, h
HANDBACK = _OWNED + """
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[1], '*', 'v', ARGV[4], 'h', ARGV[5])
return 1
"""

# KEYS: stream, queued, dead, deadletter, errors
# ARGV: group, entry, consumer, id, v, h, reason, agent, at
DEADLETTER = _OWNED + """
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('SREM', KEYS[2], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[4])
local errors = '[' .. table.concat(redis.call('LRANGE', KEYS[5], 0, -1), ',') .. ']'
redis.call('DEL', KEYS[5])
redis.call('XADD', KEYS[4], '*', 'id', ARGV[4], 'v', ARGV[5], 'h', ARGV[6], 'reason', ARGV[7],
           'agent', ARGV[8], 'at', ARGV[9], 'errors', errors)
return 1
"""

# KEYS: stream   ARGV: group, consumer, entries...   -> the entries it no longer owns
RENEW = _OWNED + """
local lost = {}
for i = 3, #ARGV do
  if owned(KEYS[1], ARGV[1], ARGV[i], ARGV[2]) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""
