-- quarry_limit_reserve_v2: one atomic rate-limit decision (window buckets: window.lua).
--
-- ARGV[1]  reservation id (unique per attempt)
-- ARGV[2]  JSON spec:
--   { "shared": [bucket...], "pool": k, "cursor": k, "epoch": k (optional: the pool's full
--     mark, its cursor, and the keys' epoch) }
-- ARGV[3…] one JSON per candidate: { "cool": k, "disabled": k, "buckets": [bucket...] }
--   bucket = { "kind": "window", "w": k, "limit": n, "cost": n, "window_ms": n, "burst": n }
--          | { "kind": "concurrency", "z": k, "limit": n, "lease_ms": n }
--          | { "kind": "day", "c": k, "limit": n, "cost": n }
--   k is an index into KEYS.
-- Time is Redis's own (TIME), so worker clocks do not matter.
--
-- Every bucket of the shared list and of one candidate must fit; the first fitting candidate
-- from the pool's cursor wins and all its buckets and the shared ones are charged together,
-- or nothing is charged.
-- Returns { 1, candidate (1-based), now_ms }  granted
--         { 2, wait_ms, now_ms }              nothing fits now; the earliest moment one may
--         { 3, 0, now_ms }                    every candidate is disabled
--         { 4, 0, now_ms }                    a daily budget is spent

local id = ARGV[1]
local spec = cjson.decode(ARGV[2])
-- Each candidate is its own argument, decoded only when the decision reaches it.
local candidates = {}
local function candidate(i)
  if candidates[i] == nil then
    candidates[i] = cjson.decode(ARGV[2 + i])
  end
  return candidates[i]
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Window buckets as loaded by their check, for the charge that may follow.
local loaded = {}

-- Returns fits (bool), wait_ms when it does not, load after the charge (0..1+).
local function check(b)
  if b.kind == 'window' then
    local key = KEYS[b.w]
    local st = window_state(key, b.window_ms, now)
    local rate = pace_rate(b.limit, b.window_ms)
    local level = pace_level(st, rate, now)
    loaded[b] = { st = st, level = level, rate = rate }
    if b.cost > b.limit then
      return false, -1, 1
    end
    local wait = window_wait(key, st, b.limit, b.window_ms, b.cost, now)
    if level + b.cost > b.burst and level > 0 then
      local target = math.max(0, b.burst - b.cost)
      wait = math.max(wait, math.ceil((level - target) / rate))
    end
    if wait > 0 then
      return false, math.max(1, wait), 1
    end
    return true, 0, (st.n + b.cost) / b.limit
  elseif b.kind == 'concurrency' then
    local z = KEYS[b.z]
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
    local held = redis.call('ZCARD', z)
    if held < b.limit then
      return true, 0, (held + 1) / b.limit
    end
    -- Leases are released when their calls end, long before they expire: look again soon.
    local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
    return false, math.max(1, math.min(1000, tonumber(first[2]) - now)), 1
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
    local w = loaded[b]
    window_charge(KEYS[b.w], w.st, w.level, b.cost, b.window_ms, w.rate, now)
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

-- The pool: candidates are tried in turn from a cursor that moves one each decision, and
-- the first that fits serves, so the work does not grow with the pool while a key is free.
-- When none fits, the pool is marked full (`pool` key) until the earliest one frees, for at
-- most a second: the decisions meanwhile refuse without looking at every key again (unless a
-- key was disabled or cooled down since: `epoch`, which those bump).
local n = #ARGV - 2
local pool = spec.pool and KEYS[spec.pool]
-- A key disabled or cooled since (the epoch moved) voids the mark.
local epoch = pool and (redis.call('GET', KEYS[spec.epoch]) or '0')
if pool and shared_wait == 0 then
  local mark = redis.call('GET', pool)
  if mark then
    local until_ms, at_epoch = string.match(mark, '^(%d+):(%d+)$')
    until_ms = tonumber(until_ms)
    if until_ms and at_epoch == epoch and until_ms > now then
      return { 2, until_ms - now, now }
    end
  end
end
local start = 0
if pool and n > 1 then
  start = redis.call('INCR', KEYS[spec.cursor]) % n
end
local best = nil
local earliest = nil
local disabled = 0
for step = 0, n - 1 do
  local i = (start + step) % n + 1
  local c = candidate(i)
  if redis.call('EXISTS', KEYS[c.disabled]) == 1 then
    disabled = disabled + 1
  else
    local cool = redis.call('PTTL', KEYS[c.cool])
    local fits_all, wait_i = true, 0
    if cool > 0 then
      fits_all, wait_i = false, cool
    end
    for _, b in ipairs(c.buckets) do
      local fits, wait = check(b)
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
    end
    if fits_all then
      best = i
      break
    end
    if earliest == nil or wait_i < earliest then
      earliest = wait_i
    end
  end
end

if pool and best == nil and earliest ~= nil and shared_wait == 0 then
  redis.call('SET', pool, string.format('%d', now + earliest) .. ':' .. epoch, 'PX',
    math.max(1, math.min(1000, earliest)))
end
if n > 0 and disabled == n then
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
for _, b in ipairs(candidate(best).buckets) do
  charge(b)
end
return { 1, best, now }
