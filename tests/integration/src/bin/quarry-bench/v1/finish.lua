-- The limiter before issue 23 (sliding logs), kept for `quarry-bench limiter` to measure the
-- current one against in the same run; not used by the worker.
-- quarry_limit_finish_v1: settle a reservation after the call.
--
-- ARGV[1]  reservation id
-- ARGV[2]  JSON: [ { "kind": "window", "z": k, "h": k, "delta": n }   -- tokens: actual - reserved
--                | { "kind": "concurrency", "z": k }                  -- release the lease
--                | { "kind": "day", "c": k, "delta": n } ]
-- A window entry that already left its window is not touched: it no longer counts.
-- Returns the number of buckets settled.

local id = ARGV[1]
local spec = cjson.decode(ARGV[2])
local settled = 0
for _, b in ipairs(spec) do
  if b.kind == 'window' then
    if b.delta ~= 0 and redis.call('HEXISTS', KEYS[b.h], id) == 1 then
      redis.call('HINCRBY', KEYS[b.h], id, b.delta)
      redis.call('HINCRBY', KEYS[b.h], '__total', b.delta)
      settled = settled + 1
    end
  elseif b.kind == 'concurrency' then
    settled = settled + redis.call('ZREM', KEYS[b.z], id)
  elseif b.kind == 'day' then
    if b.delta ~= 0 and redis.call('EXISTS', KEYS[b.c]) == 1 then
      redis.call('INCRBY', KEYS[b.c], b.delta)
      settled = settled + 1
    end
  end
end
return settled
