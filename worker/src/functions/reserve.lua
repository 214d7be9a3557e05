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
      -- The next place in the bucket's line of waiters, taken only if the decision refuses.
      local at = math.max(now + wait, st.q)
      loaded[b].queue_at = at + math.max(1, math.ceil(b.cost / rate))
      return false, math.max(1, at - now), 1
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
-- Window buckets that refused, whose line of waiters a refusal joins.
local refused_shared, refused_best = {}, {}
for _, b in ipairs(spec.shared) do
  local fits, wait = check(b)
  if not fits then
    refused_shared[#refused_shared + 1] = b
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
    local next_ms, at_epoch, step = string.match(mark, '^(%d+):(%d+):(%d+)$')
    next_ms, step = tonumber(next_ms), tonumber(step)
    if next_ms and at_epoch == epoch then
      -- The pool's line of waiters: each refusal the next place.
      local at = math.max(next_ms, now + 1)
      redis.call('SET', pool, string.format('%d', at + step) .. ':' .. epoch .. ':' .. step, 'KEEPTTL')
      return { 2, at - now, now }
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
    local refused = {}
    if cool > 0 then
      fits_all, wait_i = false, cool
    end
    for _, b in ipairs(c.buckets) do
      local fits, wait = check(b)
      if not fits then
        fits_all = false
        if b.kind == 'window' then
          refused[#refused + 1] = b
        end
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
      earliest, refused_best = wait_i, refused
    end
  end
end

-- A refusal takes its place in the lines of the buckets that refused it (the shared ones,
-- and those of the key it is told to wait for).
local function queue_up()
  for _, b in ipairs(refused_shared) do
    if b.kind == 'window' and loaded[b] and loaded[b].queue_at then
      redis.call('HSET', KEYS[b.w], 'q', string.format('%d', loaded[b].queue_at))
    end
  end
  if best == nil then
    for _, b in ipairs(refused_best) do
      if loaded[b] and loaded[b].queue_at then
        redis.call('HSET', KEYS[b.w], 'q', string.format('%d', loaded[b].queue_at))
      end
    end
  end
end
if pool and best == nil and earliest ~= nil and shared_wait == 0 then
  -- The next waiter's place: one grant of the earliest key's pace later, shared by the
  -- keys that may serve.
  local step = 1
  for _, b in ipairs(refused_best) do
    if loaded[b] and loaded[b].rate then
      step = math.max(step, math.ceil(b.cost / loaded[b].rate))
    end
  end
  step = math.max(1, math.floor(step / math.max(1, n - disabled)))
  redis.call('SET', pool, string.format('%d', now + earliest + step) .. ':' .. epoch .. ':' .. step,
    'PX', math.max(1, math.min(1000, earliest)))
end
if n > 0 and disabled == n then
  return { 3, 0, now }
end
if shared_wait > 0 then
  queue_up()
  return { 2, math.max(shared_wait, best and 0 or (earliest or 0)), now }
end
if best == nil then
  queue_up()
  return { 2, earliest or 1000, now }
end
for _, b in ipairs(spec.shared) do
  charge(b)
end
for _, b in ipairs(candidate(best).buckets) do
  charge(b)
end
return { 1, best, now }
