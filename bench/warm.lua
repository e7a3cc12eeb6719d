-- Asks each key of the hot set once, in order, so the hot workload that follows measures hits.
-- Same keys as hot_path() in wrk.lua.
local vehicles = tonumber(os.getenv("VEHICLES") or "3")
local first_ts, last_ts = 1546300800, 1767225600
local n = 0
function request()
  local k = n % 1000
  n = n + 1
  local ts = first_ts + (k * 86413) % (last_ts - first_ts)
  return wrk.format("GET", "/vehicles/" .. ((k % vehicles) + 1) .. "/timestamp/" .. ts)
end
