"""The Redis cache's Lua scripts (single server and Sentinel; Cluster uses pipelines).

Each takes its keys in ``KEYS`` (declared, so they are replica- and ACL-friendly) in the
order its comment gives; the key names are :mod:`.keys`'s. The invalidation, the
compare-and-set write-back and the restore of a refused Clear are each one script, so
atomic.
"""

from __future__ import annotations

# Read-only scripts for stat_many (KEYS declared, so they are replica- and ACL-friendly).
# HMGET/HGET of an absent field is false in Lua, which Redis returns as nil.
GLOBAL_STAT_MANY = """
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('HMGET', KEYS[i], 'digest', 'size', 'mediatype')
end
return out
"""
# KEYS: the repository's set, then per digest its blob hash and repository hash; ARGV: digests.
SCOPED_STAT_MANY = """
local out = {}
for i = 1, #ARGV do
  local h = redis.call('HMGET', KEYS[2 * i], 'digest', 'size', 'mediatype')
  out[i] = {redis.call('SISMEMBER', KEYS[1], ARGV[i]), h[1], h[2], h[3],
            redis.call('HGET', KEYS[2 * i + 1], 'mediatype')}
end
return out
"""


# The epoch's next value: larger than the last and than Redis's clock (microseconds).
# Lua numbers are doubles: exact below 2^53 (Redis's clock in microseconds is about 2^51).
NEXT_EPOCH = """
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function next_epoch(key)
  local now = now_us()
  local e = tonumber(redis.call('GET', key) or '0') + 1
  if e < now then e = now end
  local s = string.format('%d', e)
  redis.call('SET', key, s)
  return s
end
"""

# The token and whether any of the digests is fenced. KEYS: the epoch, the incarnation
# (SINCE_KEY), then the fences. A Redis that lost this service's state (restarted,
# flushed, evicted: no epoch or no incarnation) begins a new incarnation at a new epoch:
# every compare-and-set with a token read before it is refused (FILL), as the fences it
# was read under are gone.
TOKEN = (
    NEXT_EPOCH
    + """
if redis.replicate_commands then redis.replicate_commands() end
local e = redis.call('GET', KEYS[1])
local since = redis.call('GET', KEYS[2])
if not e or not since then
  e = next_epoch(KEYS[1])
  redis.call('SET', KEYS[2], e)
  since = e
end
local fenced = 0
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then fenced = 1 end
end
return {e, fenced}
"""
)

# Cluster: the bump alone (the epoch's slot). KEYS: the epoch.
BUMP = (
    NEXT_EPOCH
    + """
if redis.replicate_commands then redis.replicate_commands() end
return next_epoch(KEYS[1])
"""
)

# An invalidation, atomically. KEYS: the epoch, the fence, then (repository scope) the
# repository's set and hash, then the blob hash. ARGV: fence ms, scoped (1/0), digest.
INVALIDATE = (
    NEXT_EPOCH
    + """
if redis.replicate_commands then redis.replicate_commands() end
local e = next_epoch(KEYS[1])
redis.call('SET', KEYS[2], e, 'PX', ARGV[1])
local held
if ARGV[2] == '1' then
  held = redis.call('SREM', KEYS[3], ARGV[3])
  redis.call('DEL', KEYS[4])
  redis.call('DEL', KEYS[5])
else
  held = redis.call('DEL', KEYS[3])
  -- the aliases whose answer is this blob go too (their keys are derived, so undeclared)
  for _, alias in ipairs(redis.call('SMEMBERS', KEYS[4])) do
    redis.call('DEL', 'blobs::' .. alias)
  end
  redis.call('DEL', KEYS[4])
end
return {held, e}
"""
)

# The compare-and-set write-back. KEYS: the incarnation (SINCE_KEY: absent, or newer
# than the token, means Redis lost the fences the token was read under), the fences of
# the n digests written, then per
# digest its blob hash (and its repository hash when scoped), then the repository's set
# when scoped, then (n = 2, an alias) the canonical digest's set of aliases. ARGV: n,
# scoped (1/0), descriptor digest, size, media type, token, then the n digests (the key
# digest first). Written only if no fence is newer than the token.
FILL = """
local n = tonumber(ARGV[1])
local token = tonumber(ARGV[6])
local since = redis.call('GET', KEYS[1])
if not since or tonumber(since) > token then return 0 end
for i = 2, n + 1 do
  local cleared = redis.call('GET', KEYS[i])
  if cleared and tonumber(cleared) > token then return 0 end
end
local scoped = ARGV[2] == '1'
local set = 1 + n + n * (scoped and 2 or 1) + 1
local k = 1 + n + 1
for i = 1, n do
  local blob = KEYS[k]
  k = k + 1
  if scoped then redis.call('SADD', KEYS[set], ARGV[6 + i]) end
  redis.call('HSET', blob, 'digest', ARGV[3], 'size', ARGV[4])
  redis.call('HSETNX', blob, 'mediatype', ARGV[5])
  if scoped then
    redis.call('HSET', KEYS[k], 'mediatype', ARGV[5])
    k = k + 1
  end
end
if n == 2 then redis.call('SADD', KEYS[#KEYS], ARGV[7]) end
return 1
"""

# The restore of a refused Clear. KEYS: the fence, the blob hash, then per repository
# entry its set and hash. ARGV: the epoch, digest, then the global entry (descriptor
# digest, size, media type), then per repository entry its media type.
# Only if the digest was not invalidated since (its fence is still ours) and no entry of
# it was written since (the blob hash every write sets is still absent).
RESTORE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[2], 'digest', ARGV[3], 'size', ARGV[4], 'mediatype', ARGV[5])
local a = 6
for k = 3, #KEYS, 2 do
  redis.call('SADD', KEYS[k], ARGV[2])
  redis.call('HSET', KEYS[k + 1], 'mediatype', ARGV[a])
  a = a + 1
end
return 1
"""
