-- Pops the best ready tasks while slots are free.
-- KEYS: 1 ready, 2 inflight, 3 limit.  Returns the task ids taken.
local limit = tonumber(redis.call('GET', KEYS[3]) or '1')
local taken = {}
while tonumber(redis.call('GET', KEYS[2]) or '0') < limit do
  local best = redis.call('ZPOPMIN', KEYS[1])
  if #best == 0 then break end
  redis.call('INCR', KEYS[2])
  table.insert(taken, best[1])
end
return taken
