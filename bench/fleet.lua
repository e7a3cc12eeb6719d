-- wrk's requests for bench/fleet, chosen by WORKLOAD: counts (GET /fleet/states at a random
-- instant to the microsecond over the synthetic data's years, so none repeats and none is
-- cached), series (GET /fleet/states/series of 30 daily points from a random instant), list (GET
-- /fleet/vehicles: a page of 100 vehicles in a random state at a random instant, from a random
-- id among VEHICLES, as the page a cursor leads to however deep; a quarter are first pages).
-- Counts answers other than 200 and prints them at the end.
local workload = os.getenv("WORKLOAD") or "counts"
-- 2019-01-01 to 2025-10-01 (Unix seconds): where the synthetic histories lie.
local first_ts, last_ts = 1546300800, 1759276800
local vehicles = tonumber(os.getenv("VEHICLES") or "10000000")
local states = {"quoted", "selling", "sold"}
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
  failed = 0
end

local function instant()
  local seconds = math.random(first_ts, last_ts)
  local micros = math.random(0, 999999)
  return os.date("!%Y-%m-%dT%H:%M:%S", seconds) .. string.format(".%06dZ", micros)
end

-- The cursor this service writes: lowercase hex of "micros,id".
local function cursor(micros, id)
  local text = string.format("%d,%d", micros, id)
  return (text:gsub(".", function(c) return string.format("%02x", string.byte(c)) end))
end

function request()
  if workload == "list" then
    local state = states[math.random(1, #states)]
    local seconds = math.random(first_ts, last_ts)
    local micros = seconds * 1000000 + math.random(0, 999999)
    if math.random(1, 4) == 1 then
      return wrk.format("GET", "/fleet/vehicles?limit=100&state=" .. state .. "&at=" .. instant())
    end
    return wrk.format("GET", "/fleet/vehicles?limit=100&state=" .. state .. "&after=" .. cursor(micros, math.random(1, vehicles)))
  end
  if workload == "series" then
    -- 30 points: from, then a day on each, the 30th just before `to`.
    local start = math.random(first_ts, last_ts - 30 * 86400)
    local from = os.date("!%Y-%m-%dT%H:%M:%S", start) .. string.format(".%06dZ", math.random(0, 999999))
    local to = os.date("!%Y-%m-%dT%H:%M:%SZ", start + 29 * 86400 + 1)
    return wrk.format("GET", "/fleet/states/series?from=" .. from .. "&to=" .. to .. "&every=P1D")
  end
  return wrk.format("GET", "/fleet/states?at=" .. instant())
end

function response(status, headers, body)
  if status ~= 200 then failed = failed + 1 end
end

function done(summary, latency, requests)
  local failures = 0
  for _, thread in ipairs(threads) do failures = failures + thread:get("failed") end
  io.write(string.format('{"workload":"%s","requests":%d,"non_200":%d,"p50_ms":%.2f,"p99_ms":%.2f,"max_ms":%.2f,"rps":%.0f}\n',
    workload, summary.requests, failures, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, summary.requests / (summary.duration / 1e6)))
end
