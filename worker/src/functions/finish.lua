-- quarry_limit_finish_v2: settle a reservation after the call.
--
-- ARGV[1]  reservation id
-- ARGV[2]  JSON: [ { "kind": "window", "w": k, "delta": n, "at_ms": n,   -- tokens: actual - reserved
--                    "window_ms": n, "limit": n }
--                | { "kind": "concurrency", "z": k }                  -- release the lease
--                | { "kind": "day", "c": k, "delta": n } ]
-- A window grant whose slot the decisions no longer count is not moved there: it no longer
-- counts (its pacer is still settled).
-- Returns the number of buckets settled.

local id = ARGV[1]
local spec = cjson.decode(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local settled = 0
for _, b in ipairs(spec) do
  if b.kind == 'window' then
    if b.delta ~= 0 then
      window_settle(KEYS[b.w], b.window_ms, b.limit, b.at_ms, b.delta, now)
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
