-- A model call is over (dispatch.store.limiter): its lease goes, and its tokens are reconciled.
-- KEYS: 1 the provider's rate hash, 2 its leases.
-- ARGV: 1 lease id, 2 ms to move ``tokens_tat`` by ((used - reserved) * 60000 / tokens_per_minute;
--       negative when the call used fewer tokens than it reserved; 0: none).
-- Returns 1 when the lease was still held.
local held = redis.call('ZREM', KEYS[2], ARGV[1])
local shift = tonumber(ARGV[2])
if shift ~= 0 and redis.call('HEXISTS', KEYS[1], 'tokens_tat') == 1 then
  redis.call('HINCRBYFLOAT', KEYS[1], 'tokens_tat', string.format('%.3f', shift))
end
return held
