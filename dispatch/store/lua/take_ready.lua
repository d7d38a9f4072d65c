-- Pops the best ready tasks while slots are free (none once the run is paused at a budget cap), at most
-- ARGV[1] of them (the completions take the rest, as slots stay free).
-- KEYS: 1 ready, 2 inflight, 3 limit, 4 paused.  ARGV: 1 the most to take.  Returns the task ids taken.
if redis.call('EXISTS', KEYS[4]) == 1 then return {} end
local limit = tonumber(redis.call('GET', KEYS[3]) or '1')
local taken = {}
local most = tonumber(ARGV[1])
while #taken < most and tonumber(redis.call('GET', KEYS[2]) or '0') < limit do
  local best = redis.call('ZPOPMIN', KEYS[1])
  if #best == 0 then break end
  redis.call('INCR', KEYS[2])
  table.insert(taken, best[1])
end
return taken
