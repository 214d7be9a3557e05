-- claim.v3: the idempotency check of one delivery, in one round trip.
-- KEYS[1] the job's stored result, KEYS[2] the job's claim, KEYS[3] its batch's cancellation
-- mark, KEYS[4] its own (all under one hash tag: the plugin and the batch, or the job when it
-- has no batch).
-- ARGV[1] this delivery's owner token, ARGV[2] the claim's lifetime in milliseconds.
-- Returns {'stored', <result bytes>} | {'cancelled'} | {'claimed'} | {'held', <ms left>}.
-- A finished job keeps its result even after it or its batch is cancelled.
local stored = redis.call('GET', KEYS[1])
if stored then
  return {'stored', stored}
end
if redis.call('EXISTS', KEYS[3]) == 1 or redis.call('EXISTS', KEYS[4]) == 1 then
  return {'cancelled'}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'claimed'}
end
return {'held', tostring(redis.call('PTTL', KEYS[2]))}
