-- Shared by keygate's scripts (src/limits/redis/mod.rs; the module doc says why it is
-- written this way). Numbers beyond 2^53 (GCRA ticks = ns x limit, pico-USD sums) are
-- kept as six little-endian limbs in base 2^24, so every operation is exact in Lua's
-- doubles: a limb product is below 2^48.
local B = 16777216
local N = 6

local function parse(s)
  local t, n = {}, 0
  for d in string.gmatch(s, '%d+') do
    n = n + 1
    t[n] = tonumber(d)
  end
  for i = n + 1, N do t[i] = 0 end
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

-- A non-negative decimal string (an integer reply of Redis) as limbs.
local function from_dec(s)
  local r = {0, 0, 0, 0, 0, 0}
  if not s then return r end
  s = tostring(s)
  if string.sub(s, 1, 1) == '-' then return r end
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
  local ns = add(mul(from_dec(t[1]), from_dec('1000000000')), from_dec(tostring(tonumber(t[2]) * 1000)))
  return ns, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
