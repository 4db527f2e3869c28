-- wrk script: POST a small non-streaming chat completion, each request with the next key
-- of BENCH_KEYS_FILE (one full key per line), round robin, so N keys are each used once
-- every N requests. A one-line file is the one-key case with the same per-request work in
-- wrk, so figures from both compare keygate alone.
local keys = {}
for line in io.lines(os.getenv("BENCH_KEYS_FILE")) do
  keys[#keys + 1] = "Bearer " .. line
end
local i = 0
local body = '{"model":"mock-model","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":16}'
local headers = { ["Content-Type"] = "application/json" }

request = function()
  i = i % #keys + 1
  headers["Authorization"] = keys[i]
  return wrk.format("POST", "/v1/chat/completions", headers, body)
end
