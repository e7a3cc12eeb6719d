// Calls each endpoint once, as a front end would: `node dist/example.js [BASE_URL]`
// (default http://127.0.0.1:8080, the sample data loaded with `serve --seed sample`).
import { createVehicleStateClient, type Problem } from "./src/index.js";

const api = createVehicleStateClient(process.argv[2] ?? "http://127.0.0.1:8080");

function fail(what: string, problem: Problem | undefined, status: number): never {
  throw new Error(`${what}: ${status} ${problem?.type ?? ""} ${problem?.detail ?? ""}`);
}

// Which state was vehicle 3 in at 10:00 UTC on 12 September 2022?
const lookup = await api.GET("/vehicles/{id}/timestamp/{ts}", {
  params: { path: { id: 3, ts: "2022-09-12T10:00:00Z" } },
});
if (!lookup.data) fail("lookup", lookup.error, lookup.response.status);
console.log(
  `lookup: vehicle ${lookup.data.vehicle.id} was ${lookup.data.state} since ${lookup.data.stateSince} (X-Cache: ${lookup.response.headers.get("X-Cache")})`,
);

// Its state now, by the server's clock; polled again with the tag it came with, a 304 while the
// state holds (openapi-fetch gives no data then: the answer held is still the answer).
const now = await api.GET("/vehicles/{id}/timestamp/{ts}", { params: { path: { id: 3, ts: "now" } } });
if (!now.data) fail("now", now.error, now.response.status);
const tag = now.response.headers.get("ETag") ?? "";
const polled = await api.GET("/vehicles/{id}/timestamp/{ts}", {
  params: { path: { id: 3, ts: "now" }, header: { "If-None-Match": tag } },
});
console.log(`now: ${now.data.state} until ${now.data.until ?? "further notice"}; polled again: ${polled.response.status}`);

// Several lookups in one request: each result is an answer or a problem, in order.
const batch = await api.POST("/vehicles/states", {
  body: {
    lookups: [
      { id: 1, timestamp: "2022-09-12T10:00:00Z" },
      { id: 999, timestamp: "2022-09-12T10:00:00Z" },
    ],
  },
});
if (!batch.data) fail("batch", batch.error, batch.response.status);
for (const result of batch.data.results) {
  console.log(`batch: ${result.status} ${result.answer ? result.answer.state : result.problem?.type}`);
}

// The timeline: every change, oldest first, a page at a time.
const history = await api.GET("/vehicles/{id}/history", {
  params: { path: { id: 3 }, query: { limit: 100 } },
});
if (!history.data) fail("history", history.error, history.response.status);
for (const change of history.data.changes) {
  console.log(`history: ${change.state} from ${change.at} until ${change.until ?? "now"}`);
}

// The whole fleet at an instant: vehicles per state, and their total.
const fleet = await api.GET("/fleet/states", { params: { query: { at: "2022-09-12T12:00:00Z" } } });
if (!fleet.data) fail("fleet", fleet.error, fleet.response.status);
const perState = Object.entries(fleet.data.states)
  .map(([state, vehicles]) => `${vehicles} ${state}`)
  .join(", ");
console.log(`fleet: at ${fleet.data.at}, ${perState}; ${fleet.data.total} in all`);

// Which vehicles those are, a page at a time: `next` is the cursor of the page after.
const selling: number[] = [];
let after: string | undefined;
do {
  const page = await api.GET("/fleet/vehicles", {
    params: { query: { state: "selling", at: "2022-09-12T12:00:00Z", limit: 1, after } },
  });
  if (!page.data) fail("fleet vehicles", page.error, page.response.status);
  selling.push(...page.data.vehicles.map((vehicle) => vehicle.id));
  after = page.data.next ?? undefined;
} while (after);
console.log(`fleet: selling at 2022-09-12T12:00:00Z, vehicles ${selling.join(", ")}`);

// A vehicle that does not exist is a typed problem, not an exception.
const missing = await api.GET("/vehicles/{id}/timestamp/{ts}", {
  params: { path: { id: 999, ts: "2022-09-12T10:00:00Z" } },
});
console.log(`missing: ${missing.response.status} ${missing.error?.type}`);
