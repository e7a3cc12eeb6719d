-- bench/soak's load: one minute of mixed reads through nginx, closed loop (each connection sends
-- its next request when the last is answered). bench/soak runs one wrk per minute, so each minute
-- has its own latency percentiles and counts.
--
-- Environment: FIRST_ID and VEHICLES, the read set (ids FIRST_ID to FIRST_ID + VEHICLES - 1,
-- loaded by `seed synthetic`); INGEST_VEHICLES, the ids 1 to N whose events ingest applies during
-- the run (asked about too: 404 until registered, then answers that change); BATCH_SIZE.
--
-- The mix, per request: 55 % popular vehicles (Zipf over 10,000 ranks) at a few instants each,
-- mostly cached; 20 % any vehicle at any instant, mostly misses; 5 % a vehicle of the ingested
-- set; 10 % a batch POST of BATCH_SIZE pairs; 10 % a timeline page (a window of it half the time).
--
-- Answers: 200, 304 and 404 (no such vehicle, no state yet at that instant) are answers. Anything
-- else is an error, counted by kind: the status and, for a problem, its `type` ("503
-- database-unavailable", "503 overloaded", "502 -" from nginx ...); a batch's items that are
-- not answers likewise ("item 503 database-unavailable"). Each error is also counted under the
-- second it arrived in, so bench/soak can check it falls in a restart's window.

local first_id = tonumber(os.getenv("FIRST_ID") or "1")
local vehicles = tonumber(os.getenv("VEHICLES") or "3")
local ingest_vehicles = tonumber(os.getenv("INGEST_VEHICLES") or "1")
local batch_size = tonumber(os.getenv("BATCH_SIZE") or "25")
-- Instants over the synthetic data's years: 2019-01-01 to 2026-01-01.
local first_ts, last_ts = 1546300800, 1767225600

local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(id * 7919 + os.time())
  answers = {}  -- status -> count, for 200, 304 and 404
  errors = {}   -- kind -> count
  seconds = {}  -- "kind@unix second" -> count
  local ranks = math.min(vehicles, 10000)
  cdf, total = {}, 0
  for k = 1, ranks do total = total + 1 / (k ^ 1.1); cdf[k] = total end
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

local get_headers = {}
local batch_headers = {["Content-Type"] = "application/json"}

local function any_vehicle() return first_id + math.random(0, vehicles - 1) end
local function any_instant() return math.random(first_ts, last_ts) end

local function lookup(vehicle, ts)
  return wrk.format("GET", "/vehicles/" .. vehicle .. "/timestamp/" .. ts, get_headers)
end

local function batch()
  local items = {}
  for i = 1, batch_size do
    local vehicle = (i % 2 == 0) and (first_id + zipf() - 1) or any_vehicle()
    items[i] = string.format('{"id":%d,"timestamp":"%d"}', vehicle, any_instant())
  end
  return wrk.format("POST", "/vehicles/states", batch_headers,
    '{"lookups":[' .. table.concat(items, ",") .. "]}")
end

local function timeline()
  local path = "/vehicles/" .. (first_id + zipf() - 1) .. "/history"
  if math.random() < 0.5 then
    local from = any_instant()
    path = path .. "?from=" .. from .. "&to=" .. (from + 86400 * math.random(1, 365)) .. "&limit=" .. math.random(1, 5)
  end
  return wrk.format("GET", path, get_headers)
end

function request()
  local r = math.random()
  if r < 0.55 then
    return lookup(first_id + zipf() - 1, first_ts + math.random(0, 9) * 21600000)
  elseif r < 0.75 then
    return lookup(any_vehicle(), any_instant())
  elseif r < 0.80 then
    return lookup(math.random(1, ingest_vehicles), any_instant())
  elseif r < 0.90 then
    return batch()
  else
    return timeline()
  end
end

local function count_error(kind)
  errors[kind] = (errors[kind] or 0) + 1
  local at = kind .. "@" .. os.time()
  seconds[at] = (seconds[at] or 0) + 1
end

local function problem_type(text)
  return text:match('"type":"/problems/([%w%-]+)"') or "-"
end

local fine_item = {["vehicle-not-found"] = true, ["no-state-at-timestamp"] = true}

function response(status, headers, body)
  if status == 200 or status == 304 or status == 404 then
    answers[status] = (answers[status] or 0) + 1
    -- A batch is 200 whatever its items are: look at the items that are problems.
    if status == 200 and body:sub(1, 11) == '{"results":' and body:find('"problem"', 1, true) then
      for item, kind in body:gmatch('"status":(%d+),[^{}]-"problem":{"type":"/problems/([%w%-]+)"') do
        if not fine_item[kind] then count_error("item " .. item .. " " .. kind) end
      end
    end
  else
    count_error(status .. " " .. problem_type(body or ""))
  end
end

local function json_object(t)
  local parts = {}
  for k, v in pairs(t) do parts[#parts + 1] = string.format('"%s": %d', k, v) end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
  local all = {answers = {}, errors = {}, seconds = {}}
  for _, thread in ipairs(threads) do
    for name, into in pairs(all) do
      for k, v in pairs(thread:get(name) or {}) do into[tostring(k)] = (into[tostring(k)] or 0) + v end
    end
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "p50_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, "answers": %s, "errors": %s, "error_seconds": %s, "socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, json_object(all.answers), json_object(all.errors), json_object(all.seconds),
    e.connect, e.read, e.write, e.timeout))
end
