-- Rate-limit decisions, atomically, on Redis time: one check, or several
-- checks on one or more buckets that are charged all together or not at all.
--
-- ARGV[1]  0 to decide; else refund: the Redis time, in microseconds, at
--          which these checks were charged (see `refund` below)
-- ARGV[2]  c, the number of checks; then each check in turn:
--   algorithm: "token_bucket" | "fixed_window" | "sliding_window"
--   units: what this check asks of its bucket, with the checks before it on
--          the same bucket; 0 reads the state without changing it
--   flags: 1 shadow (it never stops the other checks) + 2 never (it cannot
--          fit at all; its figures are read with 0 units)
--   n, the number of bands; then band i: limit, window in microseconds,
--          burst, calendar unit ("" | "day" | "week" | "month" | "year")
--   the number of previous policies (those this one recently replaced, most
--          recent first), and for each: its algorithm, its band count m, its
--          m bands (4 values each), and for each band i the index (1..m) of
--          its band whose spent units band i inherits, or 0.
-- KEYS: for each check in turn, the state of its n bands (hashes, in one hash
--       slot for the whole bucket), then each previous policy's m keys.
--
-- A policy change that alters a band's algorithm or window gives that band
-- a new key. Until the new key exists, its state is seeded with the units
-- spent in the most recent previous key that still exists, so a change never
-- refills a bucket.
--
-- Returns {now_seconds, now_microseconds, refused (1/0), then for each check
-- and each of its bands: allowed (1/0), remaining, wait_us, reset_us}.
-- Every check is looked at first, each on the state the bucket has now. A
-- check fits if every band of its bucket can take its units. Only if every
-- check that is not shadow fits is each bucket charged, with the units of its
-- last check that fits (checks on one bucket ask for more and more, so those
-- that fit come first). Otherwise nothing is written, and a check that fits
-- reports its bucket's figures as they are (0 units): `refused` is 1.
-- A refund gives back, per bucket, the units of its check that asks for the
-- most, and every check reports its bucket as the refund left it (0 units).
--
-- Numbers are Lua doubles: times are whole microseconds (exact up to 2^53),
-- and the token bucket keeps the units it has spent, as a float, with the
-- time it last changed. Rounding guards (EPS) keep a value that is a whole
-- number in exact arithmetic from being rounded the wrong way.

local EPS_UNITS = 1e-9
local EPS_US = 1e-3

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local refund_at = tonumber(ARGV[1])

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

-- Start and end (microseconds) of the window containing `at`.
local function bounds(at, window, calendar)
  if calendar == '' then
    local start = at - (at % window)
    return start, start + window
  end
  local days = math.floor(at / DAY_US)
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

-- Each check: where its values and keys start, and the policies its policy
-- recently replaced.
local checks = {}
do
  local pos, key_pos = 3, 1
  for c = 1, tonumber(ARGV[2]) do
    local n = tonumber(ARGV[pos + 3])
    local check = {
      algorithm = ARGV[pos], units = tonumber(ARGV[pos + 1]), flags = tonumber(ARGV[pos + 2]),
      n = n, bands = pos + 4, keys = key_pos, previous = false,
    }
    local prev_base = pos + 4 + 4 * n
    pos, key_pos = prev_base + 1, key_pos + n
    for k = 1, tonumber(ARGV[prev_base]) do
      if k == 1 then check.previous = {} end
      local m = tonumber(ARGV[pos + 1])
      check.previous[k] = {algorithm = ARGV[pos], bands = pos + 2, keys = key_pos, map = pos + 2 + 4 * m}
      pos = pos + 2 + 4 * m + n
      key_pos = key_pos + m
    end
    checks[c] = check
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
    local start = bounds(now, window, calendar)
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

-- Spent units band i of a check inherits when its own key does not exist
-- yet: from the most recent previous policy whose mapped key still exists.
local function inherited(check, i)
  if not check.previous or redis.call('EXISTS', KEYS[check.keys + i - 1]) == 1 then
    return 0
  end
  for k = 1, #check.previous do
    local policy = check.previous[k]
    local j = tonumber(ARGV[policy.map + i - 1])
    if j > 0 and redis.call('EXISTS', KEYS[policy.keys + j - 1]) == 1 then
      return previous_spent(policy, j)
    end
  end
  return 0
end

-- Whether every band of a check's bucket can take `cost` now, and the
-- writes that charge the cost; each band's {allowed, remaining, wait, reset}
-- goes into `out` from index `at` on.
local function evaluate(check, cost, out, at)
  local algorithm = check.algorithm
  local all_ok = true
  local writes = {}
  for i = 1, check.n do
    local base = check.bands + (i - 1) * 4
    local key = KEYS[check.keys + i - 1]
    local limit = tonumber(ARGV[base])
    local window = tonumber(ARGV[base + 1])
    local burst = tonumber(ARGV[base + 2])
    local calendar = ARGV[base + 3]
    local ok, remaining, wait, reset

    if algorithm == 'token_bucket' then
      -- Spent units decay at limit/window per microsecond.
      local state = redis.call('HMGET', key, 's', 't')
      local spent = 0
      if state[1] then
        spent = tonumber(state[1]) - (now - tonumber(state[2])) * limit / window
        if spent < 0 then spent = 0 end
      else
        spent = inherited(check, i)
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
      local start, finish = bounds(now, window, calendar)
      local state = redis.call('HMGET', key, 'w', 'c')
      local count = 0
      if state[1] and tonumber(state[1]) == start then
        count = tonumber(state[2])
      elseif not state[1] then
        count = math.ceil(inherited(check, i) - EPS_UNITS)
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
      local state = redis.call('HMGET', key, 'w', 'p', 'c')
      local previous, current = 0, 0
      if state[1] then
        local w = tonumber(state[1])
        if w == start then
          previous, current = tonumber(state[2]), tonumber(state[3])
        elseif w == start - window then
          previous = tonumber(state[3])
        end
      else
        current = math.ceil(inherited(check, i) - EPS_UNITS)
      end
      -- In units × window, to stay in whole numbers.
      local used = previous * (window - elapsed) + current * window
      local budget = limit * window
      reset = start + window - now
      if used + cost * window <= budget then
        ok, remaining, wait = true, math.floor((budget - used - cost * window) / window), 0
        writes[i] = {'sw', start, previous, current + cost, window}
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
    local j = at + (i - 1) * 4
    out[j] = ok and 1 or 0
    out[j + 1] = remaining
    out[j + 2] = wait
    out[j + 3] = reset
  end
  return all_ok, writes
end

-- Each key expires when its state would equal a fresh one: no key lives
-- forever, and none expires while it still counts.
local function charge(check, writes)
  for i = 1, check.n do
    local key = KEYS[check.keys + i - 1]
    local w = writes[i]
    if w[1] == 'tb' then
      redis.call('HSET', key, 's', w[2], 't', now)
      redis.call('PEXPIRE', key, math.ceil(w[3] / 1000))
    elseif w[1] == 'fw' then
      redis.call('HSET', key, 'w', w[2], 'c', w[3])
      redis.call('PEXPIRE', key, math.ceil((w[4] - now) / 1000))
    else
      redis.call('HSET', key, 'w', w[2], 'p', w[3], 'c', w[4])
      redis.call('PEXPIRE', key, math.ceil((w[2] + 2 * w[5] - now) / 1000))
    end
  end
end

-- The reply: the time, whether refused, then each check's bands in turn.
local result = {t[1], t[2], 0}
local at = 4
for c = 1, #checks do
  checks[c].at = at
  at = at + 4 * checks[c].n
end

if refund_at > 0 then
  -- Refund: take back `units` charged at `refund_at` from each band of a
  -- check's bucket, as far as they still count. A token bucket gets back what
  -- has not flowed back since (as if the refunded units were the first to flow
  -- back); a window gets them back while the window they were counted in still
  -- counts. A refund never gives back more than the charge still holds, so it
  -- never lets a bucket admit more than its limit. Expiry times stay: a key
  -- holds less afterwards, so it is fresh no later than before.
  local function refund(check, units)
    for i = 1, check.n do
      local base = check.bands + (i - 1) * 4
      local key = KEYS[check.keys + i - 1]
      local limit = tonumber(ARGV[base])
      local window = tonumber(ARGV[base + 1])
      if check.algorithm == 'token_bucket' then
        local state = redis.call('HMGET', key, 's', 't')
        local back = units - (now - refund_at) * limit / window
        if state[1] and back > 0 then
          local spent = tonumber(state[1]) - (now - tonumber(state[2])) * limit / window
          spent = math.max(0, spent - back)
          redis.call('HSET', key, 's', string.format('%.17g', spent), 't', now)
        end
      elseif check.algorithm == 'fixed_window' then
        local start = bounds(refund_at, window, ARGV[base + 3])
        local state = redis.call('HMGET', key, 'w', 'c')
        if state[1] and tonumber(state[1]) == start then
          redis.call('HSET', key, 'c', math.max(0, tonumber(state[2]) - units))
        end
      else
        local start = refund_at - (refund_at % window)
        local state = redis.call('HMGET', key, 'w', 'p', 'c')
        local w = tonumber(state[1])
        if w == start then
          redis.call('HSET', key, 'c', math.max(0, tonumber(state[3]) - units))
        elseif w == start + window then
          redis.call('HSET', key, 'p', math.max(0, tonumber(state[2]) - units))
        end
      end
    end
  end

  -- Each bucket gives back the units of its check that asked for the most
  -- (the one charged); then every check reports its bucket as it is.
  local buckets, order = {}, {}
  for c = 1, #checks do
    local check = checks[c]
    local key = KEYS[check.keys]
    local bucket = buckets[key]
    if bucket == nil then
      bucket = {check = check, units = 0}
      buckets[key] = bucket
      order[#order + 1] = key
    end
    if check.units > bucket.units then bucket.units = check.units end
  end
  for _, key in ipairs(order) do
    local bucket = buckets[key]
    if bucket.units > 0 then refund(bucket.check, bucket.units) end
  end
  for c = 1, #checks do evaluate(checks[c], 0, result, checks[c].at) end
  return result
end

-- Decide: every check is looked at before anything is written. Per bucket,
-- the last check that fits is the one whose writes charge it.
local last = {}
local refused = false
for c = 1, #checks do
  local check = checks[c]
  if check.flags >= 2 then
    evaluate(check, 0, result, check.at)
  else
    local ok, writes = evaluate(check, check.units, result, check.at)
    if ok then
      check.writes = writes
      last[KEYS[check.keys]] = check
    end
    check.fits = ok
  end
  if not check.fits and check.flags % 2 == 0 then refused = true end
end

if refused then
  result[3] = 1
  for c = 1, #checks do
    if checks[c].fits then evaluate(checks[c], 0, result, checks[c].at) end
  end
else
  for c = 1, #checks do
    local check = checks[c]
    if check.fits and check.units > 0 and last[KEYS[check.keys]] == check then
      charge(check, check.writes)
    end
  end
end
return result
