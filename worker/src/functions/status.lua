-- quarry_limit_status_v1: the state of some candidates, for gauges.
--
-- ARGV[1]  JSON: [ { "cool": k, "disabled": k, "windows": [ { "z": k, "h": k, "window_ms": n } ] } ]
-- Returns, per candidate: { cool_ms, disabled (0/1), used_1, used_2, ... } (used = units in the
-- current window, after dropping what left it).

local spec = cjson.decode(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for _, c in ipairs(spec) do
  local row = { math.max(0, redis.call('PTTL', KEYS[c.cool])), redis.call('EXISTS', KEYS[c.disabled]) }
  for _, w in ipairs(c.windows) do
    local z, h = KEYS[w.z], KEYS[w.h]
    local expired = redis.call('ZRANGEBYSCORE', z, '-inf', now - w.window_ms)
    if #expired > 0 then
      local freed = 0
      for _, member in ipairs(expired) do
        freed = freed + (tonumber(redis.call('HGET', h, member)) or 0)
        redis.call('HDEL', h, member)
      end
      redis.call('ZREMRANGEBYSCORE', z, '-inf', now - w.window_ms)
      -- Not when nothing was freed: Lua writes -0 as "-0", which HINCRBY refuses.
      if freed ~= 0 then
        redis.call('HINCRBY', h, '__total', -freed)
      end
    end
    table.insert(row, tonumber(redis.call('HGET', h, '__total')) or 0)
  end
  table.insert(out, row)
end
return out
