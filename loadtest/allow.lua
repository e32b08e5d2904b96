-- allow.lua: wrk 4.1 script that asks the Helios gateway for decisions spread over
-- many tenants and resources, and counts the answers by status.
--
-- Target loopback or test hosts you own only, and always bound the run with -d:
--
--   wrk -t2 -c64 -d30s --latency -s loadtest/allow.lua http://127.0.0.1:8080 \
--       -- tenants=1000 resources=4 maxcost=1 key=bench-key mode=get
--
-- Script arguments (after "--", all optional, key=value):
--   tenants=N      tenants tenant-00001 .. tenant-N                     (1000)
--   resources=M    resources api:read, api:write, search, export, r4 .. (4)
--   maxcost=C      cost drawn uniformly from 1 .. C                      (1)
--   key=K          API key; otherwise an X-API-Key given with -H, otherwise
--                  "bench-key"
--   mode=get|post  GET /allow?tenant=&resource=&cost= or POST /api/v1/allow with a
--                  JSON body                                             (get)
--   pool=P         distinct requests pre-built per thread                (8192)
--   seed=S         base seed; thread i draws from seed S + i, so runs with the
--                  same arguments send the same requests                 (1)
--   count=0        do not count statuses: wrk then skips parsing headers and
--                  bodies, for the last bit of client throughput          (1)
--
-- The sequence comes from a Park-Miller (MINSTD) generator rather than math.random,
-- so it does not depend on the Lua runtime. wrk's own "Non-2xx or 3xx responses"
-- line includes the 429 denials, which are correct answers; the summary printed by
-- done() separates them.

local threads = {}
local next_thread_id = 1

local NAMED_RESOURCES = { "api:read", "api:write", "search", "export" }
local MODULUS = 2147483647 -- 2^31 - 1
local MULTIPLIER = 48271   -- products stay below 2^53, exact in Lua numbers

-- Runs once per thread in the setup environment, before that thread's init().
function setup(thread)
   thread:set("thread_id", next_thread_id)
   threads[#threads + 1] = thread
   next_thread_id = next_thread_id + 1
end

local function parse_args(args)
   local opts = {}
   for _, arg in ipairs(args) do -- args[0] is the URL and is skipped
      local name, value = string.match(arg, "^([%w_]+)=(.*)$")
      if not name then
         error("allow.lua: arguments are key=value, got '" .. arg .. "'")
      end
      opts[name] = value
   end
   return opts
end

local function positive_int(opts, name, default)
   local raw = opts[name]
   if raw == nil then
      return default
   end
   local n = tonumber(raw)
   if n == nil or n < 1 or n ~= math.floor(n) then
      error("allow.lua: " .. name .. " must be a positive integer, got '" .. raw .. "'")
   end
   return n
end

local function header_value(name)
   local wanted = string.lower(name)
   for key, value in pairs(wrk.headers) do
      if string.lower(key) == wanted then
         return value
      end
   end
   return nil
end

local function resource_name(i)
   return NAMED_RESOURCES[i] or ("r" .. (i - 1))
end

-- Runs in each thread's own environment; globals set here are per thread.
function init(args)
   local opts = parse_args(args)
   local tenants = positive_int(opts, "tenants", 1000)
   local resources = positive_int(opts, "resources", 4)
   local max_cost = positive_int(opts, "maxcost", 1)
   local pool_size = positive_int(opts, "pool", 8192)
   local seed = positive_int(opts, "seed", 1)
   local mode = opts.mode or "get"
   local key = opts.key or header_value("X-API-Key") or "bench-key"

   if mode ~= "get" and mode ~= "post" then
      error("allow.lua: mode must be get or post, got '" .. mode .. "'")
   end

   -- wrk.format merges these into every request; the table is this thread's copy.
   for name in pairs(wrk.headers) do
      if string.lower(name) == "x-api-key" then
         wrk.headers[name] = nil
      end
   end
   wrk.headers["X-API-Key"] = key
   if mode == "post" then
      wrk.headers["Content-Type"] = "application/json"
   end

   local state = (seed + thread_id) % MODULUS
   if state == 0 then
      state = 1
   end
   local function draw(n) -- uniform integer in 1 .. n
      state = (state * MULTIPLIER) % MODULUS
      return state % n + 1
   end

   pool = {}
   for i = 1, pool_size do
      local tenant = string.format("tenant-%05d", draw(tenants))
      local resource = resource_name(draw(resources))
      local cost = draw(max_cost)
      if mode == "get" then
         local path = string.format("/allow?tenant=%s&resource=%s&cost=%d",
                                    tenant, resource, cost)
         pool[i] = wrk.format("GET", path)
      else
         local body = string.format('{"tenant":"%s","resource":"%s","cost":%d}',
                                    tenant, resource, cost)
         pool[i] = wrk.format("POST", "/api/v1/allow", nil, body)
      end
   end
   pool_index = 0

   counting = opts.count ~= "0"
   statuses = {}
   if not counting then
      response = nil -- tells wrk not to parse headers and bodies
   end
end

function request()
   pool_index = pool_index % #pool + 1
   return pool[pool_index]
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

-- Runs once in the setup environment after all threads have stopped.
function done(summary, latency, requests)
   local totals = {}
   local counted = false
   for _, thread in ipairs(threads) do
      if thread:get("counting") then
         counted = true
         for status, n in pairs(thread:get("statuses") or {}) do
            totals[status] = (totals[status] or 0) + n
         end
      end
   end

   local seconds = summary.duration / 1e6
   io.write("\nHelios decisions\n")
   io.write(string.format("  requests      %d in %.2fs, %.0f req/s\n",
                          summary.requests, seconds, summary.requests / seconds))
   io.write(string.format("  latency       p50 %.2fms  p99 %.2fms  max %.2fms\n",
                          latency:percentile(50) / 1000,
                          latency:percentile(99) / 1000, latency.max / 1000))
   local e = summary.errors
   io.write(string.format("  socket errors connect %d, read %d, write %d, timeout %d\n",
                          e.connect, e.read, e.write, e.timeout))
   if not counted then
      io.write("  statuses      not counted (count=0)\n")
      return
   end

   local allowed = totals[200] or 0
   local denied = totals[429] or 0
   local client_errors, server_errors, other = 0, 0, 0
   local codes = {}
   for status, n in pairs(totals) do
      codes[#codes + 1] = status
      if status ~= 200 and status ~= 429 then
         if status >= 500 then
            server_errors = server_errors + n
         elseif status >= 400 then
            client_errors = client_errors + n
         else
            other = other + n
         end
      end
   end
   table.sort(codes)

   io.write(string.format("  200 allowed   %d\n", allowed))
   io.write(string.format("  429 denied    %d\n", denied))
   io.write(string.format("  other 4xx     %d\n", client_errors))
   io.write(string.format("  5xx           %d\n", server_errors))
   io.write(string.format("  other         %d\n", other))
   local parts = {}
   for _, status in ipairs(codes) do
      parts[#parts + 1] = string.format("%d=%d", status, totals[status])
   end
   io.write("  by status     " .. table.concat(parts, " ") .. "\n")
end
