
-- Settlement of many requests in one call (a batch drained from the settlement queue).
-- ARGV: now_limbs, now_ms, then items, each starting with its type:
--   'b' key, field, '+'|'-', |actual - estimate| x window limbs, limit limbs, ttl ms:
--       a token bucket gets the difference (Bucket::settle);
--   'm' key, estimate, actual: a budget or credits account (ignored if it expired);
--   's' key, member: a concurrency slot given back;
--   'r' key, member, lease ms: a running request's slot lease extended.
-- A batch names the same buckets and accounts over and over (one key's requests), so each
-- bucket field is read once, every change is made in Lua, and each hash is written once
-- at the end: Redis runs a few commands per batch instead of three per item. The script
-- runs atomically, so writing at the end is the same as writing as it goes.
local now, now_ms = clock(ARGV[1], ARGV[2])
local buckets, changed, ttls = {}, {}, {}
local accounts, order, alive = {}, {}, {}
local EXACT = 9007199254740991

-- Money: the batch's estimates come off an account's `reserved` and its actual costs go
-- on `spent`, summed per account; an account that expired (its period is over) is left
-- alone. `reserved` never goes below zero (a counter seeded again mid-flight).
local function settle_money(key, a)
  if alive[key] == nil then alive[key] = redis.call('EXISTS', key) == 1 end
  if alive[key] then
    if a[1] ~= 0 and redis.call('HINCRBY', key, 'reserved', string.format('%d', -a[1])) < 0 then
      redis.call('HSET', key, 'reserved', 0)
    end
    if a[2] ~= 0 then redis.call('HINCRBY', key, 'spent', string.format('%d', a[2])) end
  end
  a[1], a[2] = 0, 0
end
local i = 3
while i <= #ARGV do
  local t, key = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
  if t == 'b' then
    local field, sign, delta = ARGV[i + 2], ARGV[i + 3], parse(ARGV[i + 4])
    local hash = buckets[key]
    if not hash then hash = {}; buckets[key] = hash end
    local state = hash[field]
    if state == nil then
      local v = redis.call('HGET', key, field)
      state = false
      if v then
        local sep = string.find(v, ';', 1, true)
        state = {string.sub(v, 1, sep - 1), parse(string.sub(v, sep + 1))}
      end
      hash[field] = state
    end
    if state or sign == '+' then
      local limit = state and state[1] or ARGV[i + 5]
      local tat = state and state[2] or {0, 0, 0, 0, 0, 0}
      local now_ticks = ticks(now, limit)
      if sign == '+' then
        tat = add(max(tat, now_ticks), delta)
      else
        tat = max(sub0(tat, delta), now_ticks)
      end
      hash[field] = {limit, tat}
      changed[key] = changed[key] or {}
      changed[key][field] = true
      ttls[key] = ARGV[i + 6]
    end
    i = i + 7
  elseif t == 'm' then
    local a = accounts[key]
    if not a then
      a = {0, 0}
      accounts[key] = a
      order[#order + 1] = key
    end
    local estimate, actual = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
    -- Sums stay exact in Lua's doubles below 2^53 pico-USD ($9 007): past that, what
    -- the account holds so far is written first.
    if a[1] + estimate > EXACT or a[2] + actual > EXACT then
      settle_money(key, a)
    end
    a[1] = a[1] + estimate
    a[2] = a[2] + actual
    i = i + 4
  elseif t == 's' then
    redis.call('ZREM', key, ARGV[i + 2])
    i = i + 3
  else
    redis.call('ZADD', key, 'XX', now_ms + tonumber(ARGV[i + 3]), ARGV[i + 2])
    redis.call('PEXPIRE', key, ARGV[i + 3])
    i = i + 4
  end
end
for key, fields in pairs(changed) do
  local args = {}
  for field in pairs(fields) do
    local state = buckets[key][field]
    args[#args + 1] = field
    args[#args + 1] = state[1] .. ';' .. fmt(state[2])
  end
  redis.call('HSET', key, unpack(args))
  redis.call('PEXPIRE', key, ttls[key])
end
for _, key in ipairs(order) do
  settle_money(key, accounts[key])
end
return 1
