-- A starting task's payload, the cancel flag and its dependencies' outputs, and its claim.
-- KEYS: 1 payloads, 2 cancel flag, 3 depends, 4 results, 5 claims.  ARGV: 1 task_id, 2 Celery id ("": no
-- claim), 3 ttl_s.  Returns {payload or false, cancelled (0/1), then per dependency: its id, its result or
-- false}, or {false, -1} when another Celery task already claimed this task: a second send of it (a
-- redelivered completer re-sends what it may not have sent), which must not run the agent again.  A retry
-- or a redelivery of the claimant itself keeps its Celery id, so it passes.  {false, -2}: the run has no
-- phase 4 under way here (an unknown run, another deployment's, or one already closed): nothing is written.
if redis.call('EXISTS', KEYS[1]) == 0 then return {false, -2} end
if ARGV[2] ~= '' then
  if redis.call('HSETNX', KEYS[5], ARGV[1], ARGV[2]) == 1 then
    redis.call('EXPIRE', KEYS[5], ARGV[3])
  elseif redis.call('HGET', KEYS[5], ARGV[1]) ~= ARGV[2] then
    return {false, -1}
  end
end
local reply = {redis.call('HGET', KEYS[1], ARGV[1]), redis.call('EXISTS', KEYS[2])}
local deps = redis.call('HGET', KEYS[3], ARGV[1])
if deps then
  for dep in string.gmatch(deps, '[^\n]+') do
    table.insert(reply, dep)
    table.insert(reply, redis.call('HGET', KEYS[4], dep))
  end
end
return reply
