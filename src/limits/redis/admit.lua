
-- Admission: every GCRA bucket of the request, the key's budget, the workspace's credits
-- and the key's max_parallel slot, checked together and taken all or nothing.
-- ARGV: now_limbs, now_ms, mode ('admit' | 'exact' | 'peek'), charge count, bucket ttl ms,
--   slot: key index (0 = none), max, member, lease ms,
--   money count, then per account: kind, key index, limit limbs, estimate, ttl ms,
--   then per charge: key index, field, limit limbs, cost(max(n,1)) limbs, cost(n) limbs,
--   capacity limbs (costs in ticks of 1/limit ns, computed by the caller).
-- Returns {1, now, '', tat...} admitted (or peeked), {0, now, reason, tat...} refused
-- (states before the charge; a budget or credits refusal adds what that account had left),
-- {2, kind...} when an account's counter must be seeded first. 'exact' admits money only
-- when the whole estimate fits what is left (keys that fit max_tokens), 'admit' while
-- anything is left.
local now, now_ms = clock(ARGV[1], ARGV[2])
local peek = ARGV[3] == 'peek'
local exact = ARGV[3] == 'exact'
local count = tonumber(ARGV[4])
local bucket_ttl = ARGV[5]
local slot_key = tonumber(ARGV[6])
local reason = nil
local left = nil

-- The concurrency slot: leases past their expiry are gone first.
if not peek and slot_key > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[slot_key], '-inf', now_ms)
  if redis.call('ZCARD', KEYS[slot_key]) >= tonumber(ARGV[7]) then reason = 'slot' end
end

-- Money: the key's budget, then the workspace's credits (the in-process order).
local money = tonumber(ARGV[10])
local at = 11
local accounts = {}
local seeds = {}
for m = 1, money do
  local kind, key, limit, estimate, ttl = ARGV[at], KEYS[tonumber(ARGV[at + 1])], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4]
  at = at + 5
  if not peek then
    local v = redis.call('HMGET', key, 'spent', 'reserved')
    if not v[1] then
      seeds[#seeds + 1] = kind
    elseif reason == nil and estimate ~= '0' then
      local lim, used = parse(limit), add(from_dec(v[1]), from_dec(v[2]))
      if cmp(lim, used) <= 0 or (exact and cmp(lim, add(used, from_dec(estimate))) < 0) then
        reason = kind
        left = sub0(lim, used)
      end
    end
    accounts[#accounts + 1] = {key, estimate, ttl}
  end
end
if #seeds > 0 then
  table.insert(seeds, 1, 2)
  return seeds
end

-- Buckets: one HMGET per hash (a request's buckets share their key's hash).
local fields = {}
for c = 0, count - 1 do
  local k = tonumber(ARGV[at + c * 6])
  fields[k] = fields[k] or {}
  table.insert(fields[k], ARGV[at + c * 6 + 1])
end
local stored = {}
for k, list in pairs(fields) do
  local values = redis.call('HMGET', KEYS[k], unpack(list))
  stored[k] = {}
  for i, f in ipairs(list) do stored[k][f] = values[i] end
end

-- Each bucket as the memory limiter sees it: set_limit, then charge; a bucket named
-- twice sees the earlier charge.
local current = {}
local out = {}
local refused = false
for c = 0, count - 1 do
  local i = at + c * 6
  local k, field, limit = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2]
  local id = k .. ':' .. field
  local old = current[id]
  if not old then
    local v = stored[k][field]
    if v then
      local sep = string.find(v, ';', 1, true)
      old = {string.sub(v, 1, sep - 1), parse(string.sub(v, sep + 1))}
    else
      old = {limit, {0, 0, 0, 0, 0, 0}}
    end
  end
  local lim = parse(limit)
  local tat = old[2]
  if old[1] ~= limit then
    local before = parse(old[1])
    local used = {0, 0, 0, 0, 0, 0}
    if not is_zero(before) and not is_zero(lim) then used = sub0(tat, ticks(now, old[1])) end
    tat = add(ticks(now, limit), used)
  end
  local after = tat
  if not peek then
    local now_ticks = ticks(now, limit)
    local base = max(tat, now_ticks)
    if cmp(add(base, parse(ARGV[i + 3])), add(now_ticks, parse(ARGV[i + 5]))) > 0 then
      refused = true
    else
      after = add(base, parse(ARGV[i + 4]))
    end
  end
  current[id] = {limit, after, k, field}
  out[c + 1] = {tat, after}
end

if refused and reason == nil then reason = 'rate' end
local result = {1, fmt(now), ''}
if peek or reason ~= nil then
  if reason ~= nil then result = {0, fmt(now), reason} end
  for c = 1, count do result[c + 3] = fmt(out[c][1]) end
  if left then result[count + 4] = fmt(left) end
  return result
end

if slot_key > 0 then
  redis.call('ZADD', KEYS[slot_key], now_ms + tonumber(ARGV[9]), ARGV[8])
  redis.call('PEXPIRE', KEYS[slot_key], ARGV[9])
end
for _, a in ipairs(accounts) do
  redis.call('HINCRBY', a[1], 'reserved', a[2])
  redis.call('PEXPIRE', a[1], a[3])
end
local writes = {}
for _, s in pairs(current) do
  writes[s[3]] = writes[s[3]] or {}
  table.insert(writes[s[3]], s[4])
  table.insert(writes[s[3]], s[1] .. ';' .. fmt(s[2]))
end
for k, list in pairs(writes) do
  redis.call('HSET', KEYS[k], unpack(list))
  redis.call('PEXPIRE', KEYS[k], bucket_ttl)
end
for c = 1, count do result[c + 3] = fmt(out[c][2]) end
return result
