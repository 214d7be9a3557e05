-- The limiter before issue 23 (sliding logs), kept for `quarry-bench limiter` to measure the
-- current one against in the same run; not used by the worker.
-- quarry_limit_reserve_v1: one atomic rate-limit decision.
--
-- ARGV[1]  reservation id (unique per attempt)
-- ARGV[2]  JSON spec:
--   { "shared": [bucket...],
--     "candidates": [ { "cool": k, "disabled": k, "buckets": [bucket...] } ... ] }
--   bucket = { "kind": "window", "z": k, "h": k, "limit": n, "cost": n, "window_ms": n }
--          | { "kind": "concurrency", "z": k, "limit": n, "lease_ms": n }
--          | { "kind": "day", "c": k, "limit": n, "cost": n }
--   k is an index into KEYS.
-- Time is Redis's own (TIME), so worker clocks do not matter.
--
-- Every bucket of the shared list and of one candidate must fit; the fitting candidate with
-- the lowest load wins and all its buckets and the shared ones are charged together, or
-- nothing is charged.
-- Returns { 1, candidate (1-based), now_ms }  granted
--         { 2, wait_ms, now_ms }              nothing fits now; the earliest moment one may
--         { 3, 0, now_ms }                    every candidate is disabled
--         { 4, 0, now_ms }                    a daily budget is spent

local id = ARGV[1]
local spec = cjson.decode(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function prune_window(b)
  local z, h = KEYS[b.z], KEYS[b.h]
  local expired = redis.call('ZRANGEBYSCORE', z, '-inf', now - b.window_ms)
  if #expired > 0 then
    local freed = 0
    for _, member in ipairs(expired) do
      freed = freed + (tonumber(redis.call('HGET', h, member)) or 0)
      redis.call('HDEL', h, member)
    end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now - b.window_ms)
    -- Not when nothing was freed: Lua writes -0 as "-0", which HINCRBY refuses.
    if freed ~= 0 then
      redis.call('HINCRBY', h, '__total', -freed)
    end
  end
  return tonumber(redis.call('HGET', h, '__total')) or 0
end

-- Returns fits (bool), wait_ms when it does not, load after the charge (0..1+).
local function check(b)
  if b.kind == 'window' then
    local total = prune_window(b)
    if total + b.cost <= b.limit then
      return true, 0, (total + b.cost) / b.limit
    end
    if b.cost > b.limit then
      return false, -1, 1
    end
    -- Walk the oldest entries until enough would have expired.
    local need = total + b.cost - b.limit
    local entries = redis.call('ZRANGE', KEYS[b.z], 0, -1, 'WITHSCORES')
    local freed = 0
    for i = 1, #entries, 2 do
      freed = freed + (tonumber(redis.call('HGET', KEYS[b.h], entries[i])) or 0)
      if freed >= need then
        return false, math.max(1, tonumber(entries[i + 1]) + b.window_ms - now + 1), 1
      end
    end
    return false, b.window_ms, 1
  elseif b.kind == 'concurrency' then
    local z = KEYS[b.z]
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
    local held = redis.call('ZCARD', z)
    if held < b.limit then
      return true, 0, (held + 1) / b.limit
    end
    local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
    return false, math.max(1, tonumber(first[2]) - now), 1
  elseif b.kind == 'day' then
    local spent = tonumber(redis.call('GET', KEYS[b.c])) or 0
    if spent + b.cost <= b.limit then
      return true, 0, (spent + b.cost) / b.limit
    end
    return false, -2, 1
  end
  return false, -1, 1
end

local function charge(b)
  if b.kind == 'window' then
    redis.call('ZADD', KEYS[b.z], now, id)
    redis.call('HSET', KEYS[b.h], id, b.cost)
    redis.call('HINCRBY', KEYS[b.h], '__total', b.cost)
    redis.call('PEXPIRE', KEYS[b.z], b.window_ms + 60000)
    redis.call('PEXPIRE', KEYS[b.h], b.window_ms + 60000)
  elseif b.kind == 'concurrency' then
    redis.call('ZADD', KEYS[b.z], now + b.lease_ms, id)
    redis.call('PEXPIRE', KEYS[b.z], b.lease_ms + 60000)
  elseif b.kind == 'day' then
    local c = KEYS[b.c]
    if redis.call('EXISTS', c) == 0 then
      local midnight = (math.floor(now / 86400000) + 1) * 86400000
      redis.call('SET', c, 0, 'PXAT', midnight)
    end
    redis.call('INCRBY', c, b.cost)
  end
end

-- The shared buckets (the plugin's quotas) first.
local shared_wait = 0
for _, b in ipairs(spec.shared) do
  local fits, wait = check(b)
  if not fits then
    if wait == -2 then
      return { 4, 0, now }
    end
    if wait < 0 then
      wait = 60000
    end
    shared_wait = math.max(shared_wait, wait)
  end
end

local best, best_load = nil, nil
local earliest = nil
local disabled = 0
for i, c in ipairs(spec.candidates) do
  if redis.call('EXISTS', KEYS[c.disabled]) == 1 then
    disabled = disabled + 1
  else
    local cool = redis.call('PTTL', KEYS[c.cool])
    local fits_all, wait_i, load = true, 0, 0
    if cool > 0 then
      fits_all, wait_i = false, cool
    end
    for _, b in ipairs(c.buckets) do
      local fits, wait, l = check(b)
      if not fits then
        fits_all = false
        if wait == -2 then
          return { 4, 0, now }
        end
        if wait < 0 then
          wait = 60000
        end
        wait_i = math.max(wait_i, wait)
      end
      load = math.max(load, l)
    end
    if fits_all and (best == nil or load < best_load) then
      best, best_load = i, load
    end
    if not fits_all and (earliest == nil or wait_i < earliest) then
      earliest = wait_i
    end
  end
end

if #spec.candidates > 0 and disabled == #spec.candidates then
  return { 3, 0, now }
end
if shared_wait > 0 then
  return { 2, math.max(shared_wait, best and 0 or (earliest or 0)), now }
end
if best == nil then
  return { 2, earliest or 1000, now }
end
for _, b in ipairs(spec.shared) do
  charge(b)
end
for _, b in ipairs(spec.candidates[best].buckets) do
  charge(b)
end
return { 1, best, now }
