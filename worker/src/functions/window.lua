-- Window buckets: at most `limit` units in any window of `window_ms`, in O(1) memory and
-- O(1) work per decision (amortised; never more than SLOTS + 1 fields), grants and
-- refusals alike.
--
-- One hash per bucket:
--   h    the oldest slot kept;  n    units charged in the kept slots
--   <r>  units charged in slot j, at field r = j % RING (the kept slots are at most RING
--        consecutive ones, so they never share a field)
--   l, t the pacer's level (units) at Redis time t (ms)
--   q    when the next refused caller is told to come back (ms): each refusal takes the
--        next place, one grant's worth of the pace after the last, so that a backlog of
--        waiters comes back one at a time instead of all at once to be refused again
--
-- Slot j of a bucket is [j, j + 1) * window_ms / SLOTS. A grant charged in slot j counts for
-- every decision made while the current slot J is at most j + SLOTS. Any window of window_ms
-- lies within SLOTS + 1 consecutive slots, all of them counted by the decision of its last
-- grant, which needed them to hold at most `limit` with it: no window ever holds more than
-- the limit. The price is a window counted up to one slot (1/60) longer than its length.
--
-- The pacer spaces grants: its level leaks at limit * SLOTS / ((SLOTS + 1) * window_ms)
-- units a ms (the rate the slots allow), and a grant needs level + cost <= burst (or, for a
-- cost above the burst, an empty pacer). So a backlog goes out evenly at the limit's rate,
-- with at most `burst` at once.

local SLOTS = 60
local RING = SLOTS + 1

local function slot_of(ms, window_ms)
  return math.floor(ms * SLOTS / window_ms)
end

local function field(j)
  return tostring(j % RING)
end

-- The bucket at `now`: { head, n, J, l, t }, with the slots the decision no longer counts
-- dropped (and the drop saved).
local function window_state(key, window_ms, now)
  local v = redis.call('HMGET', key, 'h', 'n', 'l', 't', 'q')
  local J = slot_of(now, window_ms)
  local head = tonumber(v[1]) or J
  local n = tonumber(v[2]) or 0
  local first = J - SLOTS
  if head < first then
    local stop = math.min(first - 1, head + SLOTS)
    local fields = {}
    for j = head, stop do
      fields[#fields + 1] = field(j)
    end
    local values = redis.call('HMGET', key, unpack(fields))
    for i = 1, #values do
      n = n - (tonumber(values[i]) or 0)
    end
    redis.call('HDEL', key, unpack(fields))
    if stop < first - 1 or n < 0 then
      n = 0
    end
    head = first
    redis.call('HSET', key, 'h', string.format('%d', head), 'n', string.format('%d', n))
  end
  return {
    head = head, n = n, J = J, l = tonumber(v[3]) or 0, t = tonumber(v[4]) or now,
    q = tonumber(v[5]) or 0,
  }
end

local function pace_rate(limit, window_ms)
  return limit * SLOTS / (RING * window_ms)
end

-- The pacer's level at `now`.
local function pace_level(st, rate, now)
  return math.max(0, st.l - (now - st.t) * rate)
end

-- How long until `cost` more fits the slots (0: it fits now).
local function window_wait(key, st, limit, window_ms, cost, now)
  local need = st.n + cost - limit
  if need <= 0 then
    return 0
  end
  local fields = {}
  for j = st.head, st.J do
    fields[#fields + 1] = field(j)
  end
  local values = redis.call('HMGET', key, unpack(fields))
  local freed = 0
  for i = 1, #values do
    freed = freed + (tonumber(values[i]) or 0)
    if freed >= need then
      local j = st.head + i - 1
      local leaves = math.ceil((j + RING) * window_ms / SLOTS)
      return math.max(1, leaves - now)
    end
  end
  return window_ms
end

-- Charges `cost` at `now` to a bucket loaded as `st`, with the pacer at `level`.
local function window_charge(key, st, level, cost, window_ms, rate, now)
  redis.call('HINCRBY', key, field(st.J), string.format('%d', cost))
  local l = level + cost
  redis.call('HSET', key, 'h', string.format('%d', st.head), 'n', string.format('%d', st.n + cost),
    'l', tostring(l), 't', string.format('%d', now))
  redis.call('PEXPIRE', key, math.ceil(window_ms * RING / SLOTS + l / rate) + 1000)
end

-- Moves a grant made at `at_ms` by `delta` units (the real usage less the estimate): its
-- slot, while the decision still counts it, and the pacer.
local function window_settle(key, window_ms, limit, at_ms, delta, now)
  local st = window_state(key, window_ms, now)
  local j = slot_of(at_ms, window_ms)
  local n = st.n
  if j >= st.head and j <= st.J then
    local f = field(j)
    local old = tonumber(redis.call('HGET', key, f)) or 0
    local new = math.max(0, old + delta)
    if new ~= old then
      redis.call('HSET', key, f, string.format('%d', new))
      n = n + new - old
    end
  end
  local rate = pace_rate(limit, window_ms)
  local level = math.max(0, pace_level(st, rate, now) + delta)
  redis.call('HSET', key, 'h', string.format('%d', st.head), 'n', string.format('%d', math.max(0, n)),
    'l', tostring(level), 't', string.format('%d', now))
  redis.call('PEXPIRE', key, math.ceil(window_ms * RING / SLOTS + level / rate) + 1000)
end
