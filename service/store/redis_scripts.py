"""The Redis store's Lua scripts: each is one atomic round trip (EVALSHA; reloaded after NOSCRIPT).

Key layout (see redis_layout.py): s:<id> session hash, g:<id> tombstone, z:<model> live ids by last use.
Session hash fields: m model, o owner, i incarnation, q seq, c created ms, u last used ms, x state,
a answer seq (-1: none), f answer fingerprint, r answer response, t token of the last applied write.
Times come from Redis's own clock (TIME), so that replicas never compare their clocks. Scripts that
only know a session's model once they have read its hash (lookup, delete, create's eviction) build
its z:/s:/g: key names from the prefix: every key of one deployment must live on one Redis node (a
standalone or Sentinel-managed Redis; on a cluster, put a hash tag in the key prefix).
"""

from __future__ import annotations

_WRITES = "#!lua\n"  # a script that may write: refused before it starts when Redis is out of memory

_NOW = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# A missing session: its tombstone's reason if it is the caller's, else not found.
_MISSING = r"""
local function missing(g, owner)
  local tomb = redis.call('GET', g)
  if tomb then
    local nl = string.find(tomb, '\n', 1, true)
    if nl and string.sub(tomb, nl + 1) == owner then return {'gone', string.sub(tomb, 1, nl - 1)} end
  end
  return {'none'}
end
"""

# Restart a session's TTL (and its "expired" tombstone's, which outlives it by gone_retention).
_TOUCH = r"""
local function touch(s, g, z, id, now, ttl, gone)
  redis.call('PEXPIRE', s, ttl)
  if gone > 0 then redis.call('PEXPIRE', g, ttl + gone) end
  redis.call('ZADD', z, now, id)
end
"""

# Many lookups in one call (the store coalesces those made together). KEYS s, g per lookup |
# ARGV ttl ms, gone ms, z prefix, then per lookup: owner, touch (1/0), id
# -> one string: per lookup "ok<US>m<US>i<US>q<US>c<US>u" | "gone<US>reason" | "none", joined by <RS>
LOOKUP = (
    _WRITES
    + _NOW
    + _MISSING
    + _TOUCH
    + r"""
local ttl, gone = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = nil
local out = {}
for j = 1, #KEYS / 2 do
  local s, g = KEYS[2 * j - 1], KEYS[2 * j]
  local owner, id = ARGV[3 * j + 1], ARGV[3 * j + 3]
  local f = redis.call('HMGET', s, 'o', 'm', 'i', 'q', 'c', 'u')
  if not f[1] then
    out[j] = table.concat(missing(g, owner), '\31')
  elseif f[1] ~= owner then
    out[j] = 'none'
  else
    if ARGV[3 * j + 2] == '1' then
      now = now or now_ms()
      redis.call('HSET', s, 'u', now)
      touch(s, g, ARGV[3] .. f[2], id, now, ttl, gone)
      f[6] = now
    end
    out[j] = table.concat({'ok', f[2], f[3], f[4], f[5], f[6]}, '\31')
  end
end
return table.concat(out, '\30')
"""
)

# KEYS s, g, z | ARGV model, owner, incarnation, seq, state, ttl ms, gone ms, max sessions,
# policy (reject|evict), s: prefix, g: prefix, id, replace (1/0), z: prefix, answer seq (-1: none),
# answer fingerprint, answer response
# -> {'ok', c, u, expired, evicted, live, model of the session replaced ('' none)} | {'inuse'}
#    | {'full', oldest u, now, expired}
# With replace, a live session of the same owner under the id ends (reason deleted: the id lives on,
# so no tombstone) in this same step, and only once the new one fits: a refused create leaves it as
# it was. On the same version its room counts for the new one.
CREATE = (
    _WRITES
    + _NOW
    + r"""
local ttl, gone, max = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local now = now_ms()
local cur = redis.call('HMGET', KEYS[1], 'i', 'c', 'u', 'o', 'm')
local old = nil
if cur[1] then
  if cur[1] == ARGV[3] then  -- this very create, sent again after its reply was lost
    return {'ok', cur[2], cur[3], 0, 0, redis.call('ZCARD', KEYS[3]), ''}
  end
  if ARGV[13] ~= '1' or cur[4] ~= ARGV[2] then return {'inuse'} end
  old = cur[5]
end
local expired = redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - ttl)
local live = redis.call('ZCARD', KEYS[3])
if old == ARGV[1] and redis.call('ZSCORE', KEYS[3], ARGV[12]) then live = live - 1 end
if live >= max and ARGV[9] ~= 'evict' then
  local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  return {'full', oldest[2] or now, now, expired}
end
if old then  -- the new session fits: the one it replaces ends now
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', ARGV[14] .. old, ARGV[12])
end
local evicted = 0
while live >= max do
  local victim = redis.call('ZPOPMIN', KEYS[3])
  if #victim == 0 then break end
  local vs = ARGV[10] .. victim[1]
  local owner = redis.call('HGET', vs, 'o')
  if owner then
    redis.call('DEL', vs)
    if gone > 0 then redis.call('SET', ARGV[11] .. victim[1], 'evicted\n' .. owner, 'PX', gone) end
    evicted = evicted + 1
  end
  live = live - 1
end
redis.call('HSET', KEYS[1], 'm', ARGV[1], 'o', ARGV[2], 'i', ARGV[3], 'q', ARGV[4], 'c', now, 'u', now,
           'x', ARGV[5], 'a', ARGV[15])
if ARGV[15] ~= '-1' then redis.call('HSET', KEYS[1], 'f', ARGV[16], 'r', ARGV[17]) end
redis.call('PEXPIRE', KEYS[1], ttl)
if gone > 0 then
  redis.call('SET', KEYS[2], 'expired\n' .. ARGV[2], 'PX', ttl + gone)
else
  redis.call('DEL', KEYS[2])
end
redis.call('ZADD', KEYS[3], now, ARGV[12])
return {'ok', now, now, expired, evicted, live + 1, old or ''}
"""
)

# KEYS s, g | ARGV owner, gone ms, z prefix, id -> {'ok', m, i, q, c, u} | {'gone', reason} | {'none'}
DELETE = (
    _WRITES
    + _MISSING
    + r"""
local f = redis.call('HMGET', KEYS[1], 'o', 'm', 'i', 'q', 'c', 'u')
if not f[1] then return missing(KEYS[2], ARGV[1]) end
if f[1] ~= ARGV[1] then return {'none'} end
redis.call('DEL', KEYS[1])
redis.call('ZREM', ARGV[3] .. f[2], ARGV[4])
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[2], 'deleted\n' .. ARGV[1], 'PX', ARGV[2])
else
  redis.call('DEL', KEYS[2])
end
return {'ok', f[2], f[3], f[4], f[5], f[6]}
"""
)

# Reset, and generate's commit. KEYS s, g | ARGV incarnation, expected seq ('' = any), new seq, state,
# ttl ms, gone ms, z prefix, id -> {'ok', m, i, q, c, u} | {'conflict', q} | {'gone'}
WRITE = (
    _WRITES
    + _NOW
    + _TOUCH
    + r"""
local f = redis.call('HMGET', KEYS[1], 'i', 'q', 'm', 'c')
if f[1] ~= ARGV[1] then return {'gone'} end
if ARGV[2] ~= '' and f[2] ~= ARGV[2] then return {'conflict', f[2]} end
local now = now_ms()
redis.call('HSET', KEYS[1], 'q', ARGV[3], 'x', ARGV[4], 'u', now, 'a', '-1')
redis.call('HDEL', KEYS[1], 'f', 'r', 't')
touch(KEYS[1], KEYS[2], ARGV[7] .. f[3], ARGV[8], now, tonumber(ARGV[5]), tonumber(ARGV[6]))
return {'ok', f[3], f[1], ARGV[3], f[4], now}
"""
)

# A batch's read. KEYS s x B | ARGV state bytes, "incarnation seq" per session (space-separated)
# -> {status ('.' ready, 'c' conflict, 'g' gone; one char per session), seqs, states (B x bytes)}
GATHER = r"""#!lua flags=no-writes
local nbytes = tonumber(ARGV[1])
local zero = nil
local status, seqs, states = {}, {}, {}
local i = 0
for inc, seq in string.gmatch(ARGV[2], '(%S+) (%S+)') do
  i = i + 1
  local f = redis.call('HMGET', KEYS[i], 'i', 'q', 'x')
  if f[1] == inc and f[2] == seq then
    status[i], seqs[i], states[i] = '.', seq, f[3]
  else
    if f[1] == inc then status[i], seqs[i] = 'c', f[2] else status[i], seqs[i] = 'g', '-1' end
    zero = zero or string.rep('\0', nbytes)
    states[i] = zero
  end
end
return {table.concat(status), table.concat(seqs, ' '), table.concat(states)}
"""

# A batch's write, check-and-set per session. KEYS s x B, g x B, z | ARGV ttl ms, gone ms, state bytes,
# length of the s: prefix, meta ("incarnation expected new token answer-seq fingerprint answer-length"
# per session, space-separated), states (B x bytes), answers (concatenated)
# -> {status ('.' applied, 'c' conflict, 'g' gone), seqs, then per conflict: index, a, f, r}
COMMIT = (
    _WRITES
    + _NOW
    + r"""
local ttl, gone, nbytes, plen = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local states, answers = ARGV[6], ARGV[7]
local n = (#KEYS - 1) / 2
local z = KEYS[#KEYS]
local now = now_ms()
local status, seqs, out = {}, {}, {'', ''}
local i, pos = 0, 1
local pattern = '(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)'
for inc, expect, new, token, aseq, afp, alen in string.gmatch(ARGV[5], pattern) do
  i = i + 1
  local s = KEYS[i]
  local len = tonumber(alen)
  local f = redis.call('HMGET', s, 'i', 'q', 't')
  if f[1] ~= inc then
    status[i], seqs[i] = 'g', '-1'
  elseif f[2] ~= expect then
    if f[3] == token then  -- this very write, sent again after its reply was lost
      status[i], seqs[i] = '.', f[2]
    else
      status[i], seqs[i] = 'c', f[2]
      local a = redis.call('HMGET', s, 'a', 'f', 'r')
      out[#out + 1] = i
      out[#out + 1] = a[1] or '-1'
      out[#out + 1] = a[2] or '0'
      out[#out + 1] = a[3] or ''
    end
  else
    local x = string.sub(states, (i - 1) * nbytes + 1, i * nbytes)
    if aseq == '-1' then
      redis.call('HSET', s, 'x', x, 'q', new, 'u', now, 't', token, 'a', '-1')
      redis.call('HDEL', s, 'f', 'r')
    else
      redis.call('HSET', s, 'x', x, 'q', new, 'u', now, 't', token, 'a', aseq, 'f', afp,
                 'r', string.sub(answers, pos, pos + len - 1))
    end
    redis.call('PEXPIRE', s, ttl)
    if gone > 0 then redis.call('PEXPIRE', KEYS[n + i], ttl + gone) end
    redis.call('ZADD', z, now, string.sub(s, plen + 1))
    status[i], seqs[i] = '.', new
  end
  pos = pos + len
end
out[1], out[2] = table.concat(status), table.concat(seqs, ' ')
return out
"""
)

# KEYS z x P | ARGV ttl ms -> {expired, live} per z: forget the ids Redis expired, count the rest.
SWEEP = (
    _WRITES
    + _NOW
    + r"""
local now = now_ms()
local out = {}
for i, z in ipairs(KEYS) do
  out[2 * i - 1] = redis.call('ZREMRANGEBYSCORE', z, '-inf', now - tonumber(ARGV[1]))
  out[2 * i] = redis.call('ZCARD', z)
end
return out
"""
)
