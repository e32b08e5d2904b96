-- wrk script: /allow over KEYS_N distinct (tenant, resource) pairs, each in
-- turn (a stride coprime with KEYS_N visits every pair once per KEYS_N calls).
local i = 0
local n = tonumber(os.getenv("KEYS_N") or "1000000")
wrk.headers["X-API-Key"] = os.getenv("API_KEY") or "bench-key"
request = function()
  i = i + 1
  local k = (i * 7919) % n
  return wrk.format("GET", "/allow?tenant=t" .. (k % 1000) .. "&resource=r" .. k)
end
