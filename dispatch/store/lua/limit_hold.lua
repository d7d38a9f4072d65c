-- A provider answered 429 or 503 with Retry-After (dispatch.store.limiter): no worker calls it before
-- then.  A later hold-off never shortens an earlier one.
-- KEYS: 1 the provider's rate hash.  ARGV: 1 ms from now.
-- Returns the ms the hold-off still lasts.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local hold = tonumber(redis.call('HGET', KEYS[1], 'hold_until') or '0')
if until_ms > hold then
  redis.call('HSET', KEYS[1], 'hold_until', string.format('%.0f', until_ms))
  hold = until_ms
end
redis.call('PEXPIRE', KEYS[1], math.max(redis.call('PTTL', KEYS[1]), math.ceil(hold - now) + 60000))
return math.ceil(hold - now)
