-- Asks each key of the hot set exactly once, then stops, so the hot workload that follows
-- measures hits only. Same keys as hot_path() in wrk.lua. Run with one thread, one connection.
local vehicles = tonumber(os.getenv("VEHICLES") or "3")
local first_ts, last_ts = 1546300800, 1767225600
local n, answered = 0, 0
function request()
  local k = n % 1000
  n = n + 1
  local ts = first_ts + (k * 86413) % (last_ts - first_ts)
  return wrk.format("GET", "/vehicles/" .. ((k % vehicles) + 1) .. "/timestamp/" .. ts)
end
function response(status, headers, body)
  answered = answered + 1
  if answered >= 1000 then wrk.thread:stop() end
end
