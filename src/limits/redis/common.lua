-- Shared by keygate's scripts (src/limits/redis/mod.rs; the module doc says why it is
-- written this way). Numbers beyond 2^53 (GCRA ticks = ns x limit, pico-USD sums) are
-- kept as six little-endian limbs in base 2^24, so every operation is exact in Lua's
-- doubles: a limb product is below 2^48.
local B = 16777216
local N = 6

-- Limbs are parsed once per script call (a request's buckets share their limits and
-- costs: the bench key's eight buckets name four distinct limits), and callers never
-- change a table they are given (every operation below returns a new one), so the
-- parsed table can be shared. Redis runs Lua 5.1 interpreted: parsing a limb string costs
-- more than the arithmetic on it.
local parsed = {}
local function parse(s)
  local t = parsed[s]
  if t then return t end
  local a, b, c, d, e, f = string.match(s, '^(%d+),(%d+),(%d+),(%d+),(%d+),(%d+)$')
  if a then
    t = {tonumber(a), tonumber(b), tonumber(c), tonumber(d), tonumber(e), tonumber(f)}
  else
    local n = 0
    t = {}
    for digits in string.gmatch(s, '%d+') do
      n = n + 1
      t[n] = tonumber(digits)
    end
    for i = n + 1, N do t[i] = 0 end
  end
  parsed[s] = t
  return t
end

local function fmt(t)
  return table.concat(t, ',', 1, N)
end

local function cmp(a, b)
  for i = N, 1, -1 do
    if a[i] ~= b[i] then
      if a[i] < b[i] then return -1 end
      return 1
    end
  end
  return 0
end

local function add(a, b)
  local r, c = {}, 0
  for i = 1, N do
    local s = a[i] + b[i] + c
    if s >= B then r[i] = s - B; c = 1 else r[i] = s; c = 0 end
  end
  return r
end

-- a - b, or zero when b > a.
local function sub0(a, b)
  if cmp(a, b) <= 0 then return {0, 0, 0, 0, 0, 0} end
  local r, c = {}, 0
  for i = 1, N do
    local s = a[i] - b[i] - c
    if s < 0 then r[i] = s + B; c = 1 else r[i] = s; c = 0 end
  end
  return r
end

local function mul(a, b)
  local r = {0, 0, 0, 0, 0, 0}
  for i = 1, N do
    local ai = a[i]
    if ai ~= 0 then
      local carry = 0
      for j = 1, N - i + 1 do
        local k = i + j - 1
        local t = r[k] + ai * b[j] + carry
        carry = math.floor(t / B)
        r[k] = t - carry * B
      end
    end
  end
  return r
end

local function max(a, b)
  if cmp(a, b) >= 0 then return a end
  return b
end

local function is_zero(a)
  for i = 1, N do if a[i] ~= 0 then return false end end
  return true
end

-- A non-negative integer below 2^53 as limbs.
local function small(x)
  local r = {0, 0, 0, 0, 0, 0}
  local i = 1
  while x > 0 do
    local q = math.floor(x / B)
    r[i] = x - q * B
    x = q
    i = i + 1
  end
  return r
end

-- A non-negative decimal string (an integer reply of Redis) as limbs.
local function from_dec(s)
  local r = {0, 0, 0, 0, 0, 0}
  if not s then return r end
  s = tostring(s)
  if string.sub(s, 1, 1) == '-' then return r end
  -- Up to 15 digits is below 2^53: exact as a Lua number.
  if #s <= 15 and not string.find(s, '[^%d]') then return small(tonumber(s)) end
  local i = 1
  while i <= #s do
    local chunk = string.sub(s, i, i + 5)
    local m = 10 ^ #chunk
    local carry = tonumber(chunk)
    for k = 1, N do
      local t = r[k] * m + carry
      carry = math.floor(t / B)
      r[k] = t - carry * B
    end
    i = i + 6
  end
  return r
end

-- The clock: Redis' own (one clock for every replica), or the caller's (tests).
-- Returns nanoseconds as limbs and milliseconds as a number.
local function clock(now_limbs, now_ms)
  if now_limbs ~= '' then return parse(now_limbs), tonumber(now_ms) end
  local t = redis.call('TIME')
  local seconds, micros = tonumber(t[1]), tonumber(t[2])
  local ns = add(mul(small(seconds), small(1000000000)), small(micros * 1000))
  return ns, seconds * 1000 + math.floor(micros / 1000)
end

-- now x limit (a bucket's clock in its ticks), once per distinct limit and call.
local ticks_at = {}
local function ticks(now, limit)
  local t = ticks_at[limit]
  if not t then
    t = mul(now, parse(limit))
    ticks_at[limit] = t
  end
  return t
end
