-- One model call asks for its slot at a provider (dispatch.store.limiter).  All or nothing: a refusal
-- changes nothing, so a waiting caller costs no capacity.  The clock is the server's (TIME), one for
-- every worker.
--   hold-off: no call before ``hold_until`` (a 429/503's Retry-After, recorded by limit_hold);
--   requests_per_minute / tokens_per_minute: GCRA with no burst, so calls are spaced evenly
--     (``requests_tat`` / ``tokens_tat``: when the next may go; a call costs 60000/rpm ms, and its
--     reserved tokens 60000/tpm ms each, reconciled by limit_release);
--   max_concurrency: leases in a sorted set scored by expiry, so a killed worker's lease lapses.
-- KEYS: 1 the provider's rate hash, 2 its leases.
-- ARGV: 1 requests_per_minute, 2 tokens_per_minute, 3 max_concurrency (each 0: no limit),
--       4 tokens reserved, 5 lease id, 6 lease ms.
-- Returns {1, 0, ''} when granted, else {0, ms to wait (a hint for max_concurrency), the limit}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, lease_ms = tonumber(ARGV[4]), tonumber(ARGV[6])

local hold = tonumber(redis.call('HGET', KEYS[1], 'hold_until') or '0')
if hold > now then
  return {0, math.ceil(hold - now), 'retry-after'}
end

local wait, reason = 0, ''
local req_tat, tok_tat = now, now
if rpm > 0 then
  req_tat = math.max(tonumber(redis.call('HGET', KEYS[1], 'requests_tat') or '0'), now)
  if req_tat - now > wait then wait, reason = req_tat - now, 'requests_per_minute' end
end
if tpm > 0 then
  tok_tat = math.max(tonumber(redis.call('HGET', KEYS[1], 'tokens_tat') or '0'), now)
  if tok_tat - now > wait then wait, reason = tok_tat - now, 'tokens_per_minute' end
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= conc then
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    local lapse = tonumber(first[2]) - now
    if wait == 0 then wait, reason = lapse, 'max_concurrency' end
    if wait < 1 then wait = 1 end
  end
end
if wait > 0 then
  return {0, math.ceil(wait), reason}
end

local horizon = now
if rpm > 0 then
  req_tat = req_tat + 60000 / rpm
  redis.call('HSET', KEYS[1], 'requests_tat', string.format('%.3f', req_tat))
  horizon = math.max(horizon, req_tat)
end
if tpm > 0 then
  tok_tat = tok_tat + tokens * 60000 / tpm
  redis.call('HSET', KEYS[1], 'tokens_tat', string.format('%.3f', tok_tat))
  horizon = math.max(horizon, tok_tat)
end
if rpm > 0 or tpm > 0 then
  -- kept a minute past the last time it holds, so a reconciliation still finds it
  redis.call('PEXPIRE', KEYS[1], math.max(redis.call('PTTL', KEYS[1]), math.ceil(horizon - now) + 60000))
end
if conc > 0 then
  redis.call('ZADD', KEYS[2], now + lease_ms, ARGV[5])
  redis.call('PEXPIRE', KEYS[2], math.max(redis.call('PTTL', KEYS[2]), lease_ms + 1000))
end
return {1, 0, ''}
