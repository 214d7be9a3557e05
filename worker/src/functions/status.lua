-- quarry_limit_status_v2: the state of some candidates, for gauges.
--
-- ARGV[1]  JSON: [ { "cool": k, "disabled": k, "windows": [ { "w": k, "window_ms": n } ] } ]
-- Returns, per candidate: { cool_ms, disabled (0/1), used_1, used_2, ... } (used = units the
-- decisions count now in each window bucket).

local spec = cjson.decode(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for _, c in ipairs(spec) do
  local row = { math.max(0, redis.call('PTTL', KEYS[c.cool])), redis.call('EXISTS', KEYS[c.disabled]) }
  for _, w in ipairs(c.windows) do
    table.insert(row, window_state(KEYS[w.w], w.window_ms, now).n)
  end
  table.insert(out, row)
end
return out
