-- A starting task's payload, the cancel flag and its dependencies' outputs, and its claim.
-- KEYS: 1 payloads, 2 cancel flag, 3 depends, 4 results, 5 claims.  ARGV: 1 task_id, 2 Celery id ("": no
-- claim), 3 ttl_s.  Returns {payload or false, cancelled (0/1), then per dependency: its id, its result or
-- false}, or {false, -1} when another Celery task already claimed this task: a second send of it (a
-- redelivered completer re-sends what it may not have sent), which must not run the agent again.  A retry
-- or a redelivery of the claimant itself keeps its Celery id, so it passes.  {false, -2}: the run has no
-- phase 4 under way here (an unknown run, another deployment's, or one already closed): nothing is written.
-- With a budget (KEYS 6 budget, 7 spent, 8 reserved, 9 estimates, 10 agent_spend, 11 paused; ARGV 4 now, in
-- epoch seconds), the task reserves its estimate here: its agent's own (estimates), else the mean of the
-- run's finished tasks of that agent (agent_spend), else the default.  It does not start when the spend
-- and the reservations already reach a cap, or its estimate would pass one, or the wall deadline passed:
-- {false, -3, cap, agent} then, and ``paused`` names the cap.  A retry of the claimant keeps its reservation.
if redis.call('EXISTS', KEYS[1]) == 0 then return {false, -2} end
if ARGV[2] ~= '' then
  if redis.call('HSETNX', KEYS[5], ARGV[1], ARGV[2]) == 1 then
    redis.call('EXPIRE', KEYS[5], ARGV[3])
  elseif redis.call('HGET', KEYS[5], ARGV[1]) ~= ARGV[2] then
    return {false, -1}
  end
end
local cancelled = redis.call('EXISTS', KEYS[2])
if cancelled == 0 and KEYS[6] and redis.call('EXISTS', KEYS[6]) == 1
    and redis.call('HEXISTS', KEYS[8], ARGV[1]) == 0 then
  local why = redis.call('GET', KEYS[11])
  local agent, own = string.match(redis.call('HGET', KEYS[9], ARGV[1]) or '\t', '^(.-)\t(.*)$')
  if not why then
    local b = redis.call('HMGET', KEYS[6], 'cost_cap', 'token_cap', 'deadline', 'default_cost', 'default_tokens')
    local s = redis.call('HMGET', KEYS[7], 'cost', 'tokens', 'held_cost', 'held_tokens')
    local used_cost = tonumber(s[1] or '0') + tonumber(s[3] or '0')
    local used_tokens = tonumber(s[2] or '0') + tonumber(s[4] or '0')
    local m = redis.call('HMGET', KEYS[10], agent .. ':cost', agent .. ':tokens', agent .. ':n')
    local n = tonumber(m[3] or '0')
    local est_cost, est_tokens = tonumber(b[4] or '0'), tonumber(b[5] or '0')
    if n > 0 then
      est_cost = math.floor(tonumber(m[1]) / n + 0.5)
      est_tokens = math.floor(tonumber(m[2]) / n + 0.5)
    end
    if own ~= '' then est_cost = tonumber(own) end
    if b[1] and (used_cost >= tonumber(b[1]) or used_cost + est_cost > tonumber(b[1])) then why = 'max_cost_usd'
    elseif b[2] and (used_tokens >= tonumber(b[2]) or used_tokens + est_tokens > tonumber(b[2])) then
      why = 'max_tokens'
    elseif b[3] and tonumber(ARGV[4]) >= tonumber(b[3]) then why = 'max_wall_s' end
    if why then
      redis.call('SET', KEYS[11], why, 'EX', ARGV[3])
    else
      local cost, tokens = string.format('%d', est_cost), string.format('%d', est_tokens)
      redis.call('HSET', KEYS[8], ARGV[1], cost .. ' ' .. tokens)
      redis.call('EXPIRE', KEYS[8], ARGV[3])
      redis.call('HINCRBY', KEYS[7], 'held_cost', cost)
      redis.call('HINCRBY', KEYS[7], 'held_tokens', tokens)
    end
  end
  if why then return {false, -3, why, agent} end
end
local reply = {redis.call('HGET', KEYS[1], ARGV[1]), cancelled}
local deps = redis.call('HGET', KEYS[3], ARGV[1])
if deps then
  for dep in string.gmatch(deps, '[^\n]+') do
    table.insert(reply, dep)
    table.insert(reply, redis.call('HGET', KEYS[4], dep))
  end
end
return reply
