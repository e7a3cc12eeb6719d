// The vehicle-state API as a typed fetch client: `paths` and `components` are generated from
// openapi.yaml (`npm run generate`; CI fails when they drift), openapi-fetch does the calls.
import createClient, { type ClientOptions } from "openapi-fetch";

import type { components, paths } from "./schema.js";

export type { components, paths } from "./schema.js";

/** The answer of a lookup: the vehicle and its state at the instant asked. */
export type StateAnswer = components["schemas"]["StateAnswer"];
/** A page of a vehicle's timeline. */
export type History = components["schemas"]["History"];
/** One result of a batch: an answer or a problem, in the order asked. */
export type BatchResult = components["schemas"]["BatchResult"];
/** An RFC 9457 problem body, as every error is sent. */
export type Problem = components["schemas"]["Problem"];

/** A client for the service at `baseUrl` (e.g. `https://api.example.com`). */
export function createVehicleStateClient(baseUrl: string, options: Omit<ClientOptions, "baseUrl"> = {}) {
  return createClient<paths>({ ...options, baseUrl });
}
