-- One rate-limit decision for one bucket, atomically, on Redis time.
--
-- KEYS[i]  the state of band i: a hash, in one hash slot for the whole bucket.
-- ARGV[1]  algorithm: "token_bucket" | "fixed_window" | "sliding_window"
-- ARGV[2]  cost; 0 reads the state without changing it
-- ARGV[3 + 4(i-1) ...]  band i: limit, window in microseconds, burst,
--          calendar unit ("" | "day" | "week" | "month" | "year")
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
local n = #KEYS

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

local result = {t[1], t[2]}
local all_ok = true
local writes = {}

for i = 1, n do
  local base = 3 + (i - 1) * 4
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
    if state[1] and tonumber(state[1]) == start then count = tonumber(state[2]) end
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
      local window = tonumber(ARGV[3 + (i - 1) * 4 + 1])
      redis.call('HSET', KEYS[i], 'w', w[2], 'p', w[3], 'c', w[4])
      redis.call('PEXPIRE', KEYS[i], math.ceil((w[2] + 2 * window - now) / 1000))
    end
  end
end

return result
