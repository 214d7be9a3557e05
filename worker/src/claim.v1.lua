-- claim.v1: the idempotency check of one delivery, in one round trip.
-- KEYS[1] the job's stored result, KEYS[2] the job's claim (same hash tag, same slot).
-- ARGV[1] this delivery's owner token, ARGV[2] the claim's lifetime in milliseconds.
-- Returns {'stored', <result bytes>} | {'claimed'} | {'held', <milliseconds left>}.
local stored = redis.call('GET', KEYS[1])
if stored then
  return {'stored', stored}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'claimed'}
end
return {'held', tostring(redis.call('PTTL', KEYS[2]))}
