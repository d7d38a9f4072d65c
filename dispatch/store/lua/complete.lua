-- Records one finished task once and takes the tasks that may start now, in one round trip.
-- KEYS: 1 results, 2 dependents, 3 remaining, 4 priority, 5 ready, 6 inflight, 7 limit, 8 outbox,
--       9 ledger, 10 limits, 11 progress, 12 progress gate, 13 finished (list of task ids, in finishing order),
--       14 budget, 15 spent, 16 reserved, 17 agent_spend, 18 paused
-- ARGV: 1 task_id, 2 result_json, 3 succeeded ("1"/"0"), 4 ttl_s, 5 progress_every (0: never),
--       6 id stem ("": the caller names and records what it sends itself), 7 progress gate ms,
--       8 agent, 9 cost (nano-dollars), 10 tokens, 11 ran ("1": its agent ran, so it counts for the agent's
--       mean), 12 now (epoch seconds), 13 the most tasks to take (so one completion sends a bounded
--       number however many slots are free: the next completions take the rest)
-- Returns {finished count, progress target or false, spent cost (nano-dollars), spent tokens, then per task
-- to dispatch: task id, Celery id, time limit}, or {} for a duplicate completion.  The task's reservation
-- (prepare.lua) is replaced by what it spent; once the spend alone reaches a cap (or the wall deadline
-- passed), ``paused`` names it and no further task is taken: those running finish.
-- With an id stem, the bookkeeping of sending happens here: each task to dispatch gets a Celery id
-- (stem + counter) and goes into the run's ledger (so cancel can revoke it), with its time limit.
-- The chord's size is not counted here but by add_to_chord right before each send: a completer
-- that died in between must not leave it counted.  The ids to dispatch also go to the outbox until
-- the completer confirms it sent them, so a redelivered completer whose worker died in between can
-- send them after all.
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return {} end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('RPUSH', KEYS[13], ARGV[1])  -- a follower's cursor (--results-file) reads from here
redis.call('EXPIRE', KEYS[13], ARGV[4])
if ARGV[3] == '1' then
  local children = redis.call('HGET', KEYS[2], ARGV[1])
  if children then
    for child in string.gmatch(children, '[^\n]+') do
      if redis.call('HINCRBY', KEYS[3], child, -1) == 0 then
        redis.call('ZADD', KEYS[5], redis.call('HGET', KEYS[4], child), child)
        redis.call('EXPIRE', KEYS[5], ARGV[4])  -- the set may have emptied (and gone) since start
      end
    end
  end
end
redis.call('DECR', KEYS[6])

local held = redis.call('HGET', KEYS[16], ARGV[1])
if held then
  local cost, tokens = string.match(held, '(%d+) (%d+)')
  -- as strings: a Lua number may print as 1e+15, which HINCRBY refuses ("-0" too)
  if cost ~= '0' then redis.call('HINCRBY', KEYS[15], 'held_cost', '-' .. cost) end
  if tokens ~= '0' then redis.call('HINCRBY', KEYS[15], 'held_tokens', '-' .. tokens) end
  redis.call('HDEL', KEYS[16], ARGV[1])
end
local spent_cost = redis.call('HINCRBY', KEYS[15], 'cost', ARGV[9])
local spent_tokens = redis.call('HINCRBY', KEYS[15], 'tokens', ARGV[10])
if ARGV[11] == '1' then
  redis.call('HINCRBY', KEYS[17], ARGV[8] .. ':cost', ARGV[9])
  redis.call('HINCRBY', KEYS[17], ARGV[8] .. ':tokens', ARGV[10])
  redis.call('HINCRBY', KEYS[17], ARGV[8] .. ':n', 1)
  redis.call('EXPIRE', KEYS[17], ARGV[4])
end
redis.call('EXPIRE', KEYS[15], ARGV[4])
if redis.call('EXISTS', KEYS[14]) == 1 and redis.call('EXISTS', KEYS[18]) == 0 then
  local caps = redis.call('HMGET', KEYS[14], 'cost_cap', 'token_cap', 'deadline')
  local why = false
  if caps[1] and spent_cost >= tonumber(caps[1]) then why = 'max_cost_usd'
  elseif caps[2] and spent_tokens >= tonumber(caps[2]) then why = 'max_tokens'
  elseif caps[3] and tonumber(ARGV[12]) >= tonumber(caps[3]) then why = 'max_wall_s' end
  if why then redis.call('SET', KEYS[18], why, 'EX', ARGV[4]) end
end

local limit = tonumber(redis.call('GET', KEYS[7]) or '1')
if redis.call('EXISTS', KEYS[18]) == 1 then limit = 0 end  -- paused at a cap: nothing new starts
local taken = {}
local most = tonumber(ARGV[13])
while #taken < most and tonumber(redis.call('GET', KEYS[6]) or '0') < limit do
  local best = redis.call('ZPOPMIN', KEYS[5])
  if #best == 0 then break end
  redis.call('INCR', KEYS[6])
  table.insert(taken, best[1])
end
local finished = redis.call('HLEN', KEYS[1])
local reply = {finished, false, spent_cost, spent_tokens}
local every = tonumber(ARGV[5])
if every > 0 and finished % every == 0 and redis.call('SET', KEYS[12], '1', 'NX', 'PX', ARGV[7]) then
  reply[2] = redis.call('GET', KEYS[11])
end
if #taken > 0 then
  redis.call('HSET', KEYS[8], ARGV[1], table.concat(taken, '\n'))
  redis.call('EXPIRE', KEYS[8], ARGV[4])
  for i, child in ipairs(taken) do
    local celery_id = ''
    if ARGV[6] ~= '' then
      celery_id = ARGV[6] .. string.format('%06x', i)
      redis.call('HSET', KEYS[9], celery_id, 'agent:' .. child)
    end
    table.insert(reply, child)
    table.insert(reply, celery_id)
    table.insert(reply, redis.call('HGET', KEYS[10], child) or '')
  end
  if ARGV[6] ~= '' then redis.call('EXPIRE', KEYS[9], ARGV[4]) end
end
return reply
