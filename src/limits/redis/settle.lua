
-- Settlement of many requests in one call (a batch drained from the settlement queue).
-- ARGV: now_limbs, now_ms, then items, each starting with its type:
--   'b' key, field, '+'|'-', |actual - estimate| x window limbs, limit limbs, ttl ms:
--       a token bucket gets the difference (Bucket::settle);
--   'm' key, estimate, actual: a budget or credits account (ignored if it expired);
--   's' key, member: a concurrency slot given back;
--   'r' key, member, lease ms: a running request's slot lease extended.
local now, now_ms = clock(ARGV[1], ARGV[2])
local i = 3
while i <= #ARGV do
  local t, key = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
  if t == 'b' then
    local field, sign, delta = ARGV[i + 2], ARGV[i + 3], parse(ARGV[i + 4])
    local v = redis.call('HGET', key, field)
    local limit, tat = ARGV[i + 5], nil
    if v then
      local sep = string.find(v, ';', 1, true)
      limit, tat = string.sub(v, 1, sep - 1), parse(string.sub(v, sep + 1))
    end
    if tat or sign == '+' then
      tat = tat or {0, 0, 0, 0, 0, 0}
      local ticks = mul(now, parse(limit))
      if sign == '+' then
        tat = add(max(tat, ticks), delta)
      else
        tat = max(sub0(tat, delta), ticks)
      end
      redis.call('HSET', key, field, limit .. ';' .. fmt(tat))
      redis.call('PEXPIRE', key, ARGV[i + 6])
    end
    i = i + 7
  elseif t == 'm' then
    if redis.call('EXISTS', key) == 1 then
      if ARGV[i + 2] ~= '0' and redis.call('HINCRBY', key, 'reserved', '-' .. ARGV[i + 2]) < 0 then
        redis.call('HSET', key, 'reserved', 0)
      end
      redis.call('HINCRBY', key, 'spent', ARGV[i + 3])
    end
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
return 1
