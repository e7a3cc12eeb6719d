-- One wrk script for every workload, chosen by WORKLOAD (livez, hot, cold, mixed, batch,
-- preflight, poll, now, sweep); VEHICLES is the data set's size. poll is a front end polling the
-- current state of POLL_VEHICLES (2,000) vehicles, sending its own clock to the millisecond as
-- `new Date().toISOString()` does; now polls the same vehicles at `now`; sweep is a timeline slider: instants scattered over the lives
-- of the vehicles LIVES names (a file of `id first_change last_change` lines, Unix seconds). ORIGIN and ACCEPT_ENCODING, when set, go on every
-- request as a browser's would (`Origin`, `Accept-Encoding`); preflight sends the CORS preflight
-- of the batch POST (OPTIONS with Origin and Access-Control-Request-*) and expects 200. batch POSTs BATCH_SIZE (100) random pairs per request to
-- /vehicles/states, nearly all misses. Counts answers other than 200 and 404 (404 is a valid answer: no such
-- vehicle, or no state yet at that instant) and prints one JSON line of results at the end.

local workload = os.getenv("WORKLOAD") or "livez"
local vehicles = tonumber(os.getenv("VEHICLES") or "3")
-- Instants spread over the synthetic data's years: 2019-01-01 to 2026-01-01.
local first_ts, last_ts = 1546300800, 1767225600
local hot_keys = 1000
local batch_size = tonumber(os.getenv("BATCH_SIZE") or "100")
local poll_vehicles = tonumber(os.getenv("POLL_VEHICLES") or "2000")

local threads = {}
-- Headers every request carries (ORIGIN, ACCEPT_ENCODING): a browser's, when set.
local common = {}
if os.getenv("ORIGIN") then common["Origin"] = os.getenv("ORIGIN") end
if os.getenv("ACCEPT_ENCODING") then common["Accept-Encoding"] = os.getenv("ACCEPT_ENCODING") end
local function with_common(extra)
  local headers = {}
  for k, v in pairs(common) do headers[k] = v end
  for k, v in pairs(extra or {}) do headers[k] = v end
  return headers
end
-- Built once, not per request: wrk shares the machine's cores with the service.
local get_headers = with_common()
local batch_headers = with_common({["Content-Type"] = "application/json"})
local preflight_headers = with_common({
  ["Access-Control-Request-Method"] = "POST",
  ["Access-Control-Request-Headers"] = "content-type",
})

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(id * 7919 + os.time())
  unexpected = 0
  if workload == "sweep" then
    lives = {}
    for line in io.lines(os.getenv("LIVES")) do
      local vehicle, first, last = line:match("(%d+) (%-?%d+) (%-?%d+)")
      if vehicle then lives[#lives + 1] = { tonumber(vehicle), tonumber(first), tonumber(last) } end
    end
  end
  -- Zipf over vehicles (s = 1.1) by inverse transform on a precomputed CDF of the first ranks,
  -- a long uniform tail beyond them.
  if workload == "mixed" then
    local ranks = math.min(vehicles, 10000)
    cdf, total = {}, 0
    for k = 1, ranks do total = total + 1 / (k ^ 1.1); cdf[k] = total end
  end
end

local function zipf()
  local u = math.random() * total
  local lo, hi = 1, #cdf
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end

local function path_for(vehicle, ts)
  return "/vehicles/" .. vehicle .. "/timestamp/" .. ts
end

-- Key k of the hot set: vehicle and instant both derived from k, so every thread shares them.
function hot_path(k)
  local vehicle = (k % vehicles) + 1
  local ts = first_ts + (k * 86413) % (last_ts - first_ts)
  return path_for(vehicle, ts)
end

-- The client's clock now, to the millisecond, as `new Date().toISOString()` writes it (wrk's
-- Lua is LuaJIT: its FFI reads the real-time clock).
local ffi = require("ffi")
ffi.cdef[[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clock_id, bench_timespec *tp);
]]
local now_ts = ffi.new("bench_timespec")
local function client_clock()
  ffi.C.clock_gettime(0, now_ts)
  local seconds = tonumber(now_ts.tv_sec)
  return os.date("!%Y-%m-%dT%H:%M:%S", seconds) .. string.format(".%03dZ", math.floor(tonumber(now_ts.tv_nsec) / 1e6))
end

-- An instant in a vehicle's life: from a tenth of its span before its first change to a tenth
-- after its last, to the second, as a slider dragged across its timeline gives.
local function sweep_path()
  local life = lives[math.random(1, #lives)]
  local span = math.max(life[3] - life[2], 1)
  local margin = math.floor(span / 10)
  return path_for(life[1], math.random(life[2] - margin, life[3] + margin))
end

local function batch_body()
  local items = {}
  for i = 1, batch_size do
    items[i] = string.format('{"id":%d,"timestamp":"%d"}', math.random(1, vehicles), math.random(first_ts, last_ts))
  end
  return '{"lookups":[' .. table.concat(items, ",") .. "]}"
end

function request()
  local path
  if workload == "batch" then
    return wrk.format("POST", "/vehicles/states", batch_headers, batch_body())
  elseif workload == "preflight" then
    return wrk.format("OPTIONS", "/vehicles/states", preflight_headers)
  elseif workload == "livez" then
    path = "/livez"
  elseif workload == "hot" then
    path = hot_path(math.random(0, hot_keys - 1))
  elseif workload == "cold" then
    path = path_for(math.random(1, vehicles), math.random(first_ts, last_ts))
  elseif workload == "poll" then
    path = path_for(math.random(1, math.min(poll_vehicles, vehicles)), client_clock())
  elseif workload == "now" then
    path = "/vehicles/" .. math.random(1, math.min(poll_vehicles, vehicles)) .. "/timestamp/now"
  elseif workload == "sweep" then
    path = sweep_path()
  elseif math.random() < 0.2 then
    -- The long tail: a fifth of requests ask about any vehicle at any instant.
    path = path_for(math.random(1, vehicles), math.random(first_ts, last_ts))
  else
    -- Popular vehicles (Zipf over the first 10,000 ranks) asked about at a few instants each.
    path = path_for(zipf(), first_ts + math.random(0, 9) * 21600000)
  end
  return wrk.format("GET", path, get_headers)
end

function response(status, headers, body)
  if workload == "preflight" then
    if status ~= 200 then unexpected = unexpected + 1 end
  elseif status ~= 200 and status ~= 404 then
    unexpected = unexpected + 1
  elseif workload == "batch" and (body:find('"status":5', 1, true) or body:find('"status":400', 1, true)) then
    -- An item the service could not answer counts as an unexpected answer too.
    unexpected = unexpected + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do bad = bad + thread:get("unexpected") end
  local e = summary.errors
  io.write(string.format(
    '{"lookups_per_request": %d, "requests": %d, "seconds": %.3f, "p50_ms": %.3f, "p99_ms": %.3f, "errors": %d, "unexpected_status": %d}\n',
    workload == "batch" and batch_size or 1, summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.connect + e.read + e.write + e.timeout, bad))
end
