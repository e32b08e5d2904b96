-- One rate-limit decision for one bucket, atomically, on Redis time.
--
-- KEYS[1..n]  the state of band i: a hash, in one hash slot for the whole
--             bucket; then the keys of the previous policy's bands, if any.
-- ARGV[1]  algorithm: "token_bucket" | "fixed_window" | "sliding_window"
-- ARGV[2]  cost; 0 reads the state without changing it
-- ARGV[3]  n, the number of bands
-- ARGV[4 + 4(i-1) ...]  band i: limit, window in microseconds, burst,
--          calendar unit ("" | "day" | "week" | "month" | "year")
-- then, after the bands: the number of previous policies (those this one
-- recently replaced, most recent first), and for each: its algorithm, its band
-- count m, its m bands (4 values each), and for each band i the index (1..m)
-- of its band whose spent units band i inherits, or 0. KEYS holds each
-- previous policy's m keys after the bucket's own, in the same order.
--
-- A policy change that alters a band's algorithm or window gives that band
-- a new key. Until the new key exists, its state is seeded with the units
-- spent in the most recent previous key that still exists, so a change never
-- refills a bucket.
--
-- Returns {now_seconds, now_microseconds, then per band: allowed (1/0),
-- remaining, wait_us, reset_us}. Every band is checked first; only if all
-- allow (and cost > 0) is every band charged. A denial writes nothing.
--
-- Numbers are Lua doubles: times are whole microseconds (exact up to 2^53),
-- and the token bucket keeps the units it has spent, as a float, with the
-- time it last changed. Rounding guards (EPS) keep a value that is a whole
-- number in exact arithmetic from being rounded the wrong way.

local EPS_UNITS = 1e-9
local EPS_US = 1e-3

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local algorithm = ARGV[1]
local cost = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local prev_base = 4 + 4 * n

local function ceil_us(x)
  if x <= EPS_US then return 0 end
  return math.ceil(x - EPS_US)
end

local function floor_units(x)
  return math.floor(x + EPS_UNITS)
end

-- Days since 1970-01-01 of a proleptic Gregorian date, and back.
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp + 3
  if m > 12 then m = m - 12 end
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local DAY_US = 86400 * 1000000

-- Start and end (microseconds) of the window containing `now`.
local function bounds(window, calendar)
  if calendar == '' then
    local start = now - (now % window)
    return start, start + window
  end
  local days = math.floor(now / DAY_US)
  if calendar == 'day' then
    return days * DAY_US, (days + 1) * DAY_US
  elseif calendar == 'week' then
    -- 1970-01-01 was a Thursday; weeks start on Monday.
    local monday = days - ((days + 3) % 7)
    return monday * DAY_US, (monday + 7) * DAY_US
  end
  local y, m = civil_from_days(days)
  if calendar == 'month' then
    local ny, nm = y, m + 1
    if nm > 12 then ny, nm = y + 1, 1 end
    return days_from_civil(y, m, 1) * DAY_US, days_from_civil(ny, nm, 1) * DAY_US
  end
  return days_from_civil(y, 1, 1) * DAY_US, days_from_civil(y + 1, 1, 1) * DAY_US
end

-- The policies this one recently replaced, most recent first: where each one's
-- band values, keys and inheritance map start.
local previous = {}
do
  local pos, key_pos = prev_base + 1, n + 1
  for k = 1, tonumber(ARGV[prev_base]) do
    local m = tonumber(ARGV[pos + 1])
    previous[k] = {algorithm = ARGV[pos], bands = pos + 2, keys = key_pos, map = pos + 2 + 4 * m}
    pos = pos + 2 + 4 * m + n
    key_pos = key_pos + m
  end
end

-- Units spent now in band j of a previous policy.
local function previous_spent(policy, j)
  local base = policy.bands + (j - 1) * 4
  local limit = tonumber(ARGV[base])
  local window = tonumber(ARGV[base + 1])
  local calendar = ARGV[base + 3]
  local key = KEYS[policy.keys + j - 1]
  if policy.algorithm == 'token_bucket' then
    local state = redis.call('HMGET', key, 's', 't')
    local spent = tonumber(state[1]) - (now - tonumber(state[2])) * limit / window
    if spent < 0 then return 0 end
    return spent
  elseif policy.algorithm == 'fixed_window' then
    local start = bounds(window, calendar)
    local state = redis.call('HMGET', key, 'w', 'c')
    if tonumber(state[1]) == start then return tonumber(state[2]) end
    return 0
  end
  local start = now - (now % window)
  local state = redis.call('HMGET', key, 'w', 'p', 'c')
  local w = tonumber(state[1])
  if w == start then
    return tonumber(state[2]) * (window - (now - start)) / window + tonumber(state[3])
  elseif w == start - window then
    return tonumber(state[3]) * (window - (now - start)) / window
  end
  return 0
end

-- Spent units band i inherits when its own key does not exist yet: from the
-- most recent previous policy whose mapped key still exists.
local function inherited(i)
  if #previous == 0 or redis.call('EXISTS', KEYS[i]) == 1 then return 0 end
  for k = 1, #previous do
    local policy = previous[k]
    local j = tonumber(ARGV[policy.map + i - 1])
    if j > 0 and redis.call('EXISTS', KEYS[policy.keys + j - 1]) == 1 then
      return previous_spent(policy, j)
    end
  end
  return 0
end

local result = {t[1], t[2]}
local all_ok = true
local writes = {}

for i = 1, n do
  local base = 4 + (i - 1) * 4
  local limit = tonumber(ARGV[base])
  local window = tonumber(ARGV[base + 1])
  local burst = tonumber(ARGV[base + 2])
  local calendar = ARGV[base + 3]
  local ok, remaining, wait, reset

  if algorithm == 'token_bucket' then
    -- Spent units decay at limit/window per microsecond.
    local state = redis.call('HMGET', KEYS[i], 's', 't')
    local spent = 0
    if state[1] then
      spent = tonumber(state[1]) - (now - tonumber(state[2])) * limit / window
      if spent < 0 then spent = 0 end
    else
      spent = inherited(i)
    end
    local after = spent + cost
    if after <= burst + EPS_UNITS then
      ok, remaining, wait = true, floor_units(burst - after), 0
      reset = ceil_us(after * window / limit)
      writes[i] = {'tb', string.format('%.17g', after), reset}
    else
      ok, remaining = false, floor_units(burst - spent)
      wait = ceil_us((after - burst) * window / limit)
      reset = ceil_us(spent * window / limit)
    end
  elseif algorithm == 'fixed_window' then
    local start, finish = bounds(window, calendar)
    local state = redis.call('HMGET', KEYS[i], 'w', 'c')
    local count = 0
    if state[1] and tonumber(state[1]) == start then
      count = tonumber(state[2])
    elseif not state[1] then
      count = math.ceil(inherited(i) - EPS_UNITS)
    end
    reset = finish - now
    if count + cost <= limit then
      ok, remaining, wait = true, limit - count - cost, 0
      writes[i] = {'fw', start, count + cost, finish}
    else
      ok, remaining, wait = false, math.max(0, limit - count), finish - now
    end
  else
    -- Sliding window: previous × (1 − elapsed/window) + current.
    local start = now - (now % window)
    local elapsed = now - start
    local state = redis.call('HMGET', KEYS[i], 'w', 'p', 'c')
    local previous, current = 0, 0
    if state[1] then
      local w = tonumber(state[1])
      if w == start then
        previous, current = tonumber(state[2]), tonumber(state[3])
      elseif w == start - window then
        previous = tonumber(state[3])
      end
    else
      current = math.ceil(inherited(i) - EPS_UNITS)
    end
    -- In units × window, to stay in whole numbers.
    local used = previous * (window - elapsed) + current * window
    local budget = limit * window
    reset = start + window - now
    if used + cost * window <= budget then
      ok, remaining, wait = true, math.floor((budget - used - cost * window) / window), 0
      writes[i] = {'sw', start, previous, current + cost}
    else
      ok, remaining = false, math.max(0, math.floor((budget - used) / window))
      local room = limit - current - cost
      if room >= 0 then
        local needed = window - math.floor(room * window / previous)
        wait = math.max(0, needed - elapsed)
      else
        room = limit - cost
        local needed = 0
        if current > room then needed = window - math.floor(room * window / current) end
        wait = window - elapsed + needed
      end
    end
  end

  if not ok then all_ok = false end
  result[#result + 1] = ok and 1 or 0
  result[#result + 1] = remaining
  result[#result + 1] = wait
  result[#result + 1] = reset
end

-- Charge every band, or none. Each key expires when its state would equal a
-- fresh one: no key lives forever, and none expires while it still counts.
if all_ok and cost > 0 then
  for i = 1, n do
    local w = writes[i]
    if w[1] == 'tb' then
      redis.call('HSET', KEYS[i], 's', w[2], 't', now)
      redis.call('PEXPIRE', KEYS[i], math.ceil(w[3] / 1000))
    elseif w[1] == 'fw' then
      redis.call('HSET', KEYS[i], 'w', w[2], 'c', w[3])
      redis.call('PEXPIRE', KEYS[i], math.ceil((w[4] - now) / 1000))
    else
      local window = tonumber(ARGV[4 + (i - 1) * 4 + 1])
      redis.call('HSET', KEYS[i], 'w', w[2], 'p', w[3], 'c', w[4])
      redis.call('PEXPIRE', KEYS[i], math.ceil((w[2] + 2 * window - now) / 1000))
    end
  end
end

return result
