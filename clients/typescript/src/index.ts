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
/** How many vehicles were in each state at an instant, and their total. */
export type FleetCounts = components["schemas"]["FleetCounts"];
/** A page of the vehicles in a state at an instant, in id order (`next`: the cursor of the next). */
export type FleetVehicles = components["schemas"]["FleetVehicles"];
/** An RFC 9457 problem body, as every error is sent. */
export type Problem = components["schemas"]["Problem"];

/** A client for the service at `baseUrl` (e.g. `https://api.example.com`). */
export function createVehicleStateClient(baseUrl: string, options: Omit<ClientOptions, "baseUrl"> = {}) {
  return createClient<paths>({ ...options, baseUrl });
}

/** A change committed to a vehicle, as a stream of changes sends it. */
export type Announcement = components["schemas"]["Announcement"];
/** What a stream of changes starts with: the vehicle as it is now. */
export type Snapshot = components["schemas"]["Snapshot"];

/** What to do with each event of a stream of changes; `id` is the event's place in the feed. */
export interface ChangeHandlers {
  snapshot?(snapshot: Snapshot, id: string): void;
  change?(announcement: Announcement, id: string): void;
  /** The server ended the stream (it is stopping, or this client read too slowly); the
   * EventSource reconnects by itself with `Last-Event-ID`, and nothing is lost. */
  end?(reason: string): void;
  error?(event: Event): void;
}

/**
 * Watches vehicles' changes: `GET /vehicles/{id}/changes` for one id, `GET /changes?ids=` for
 * several. An `EventSource` reconnects by itself after a network error or the end of a stream,
 * sending the last event's id, and the service resumes from there: no change is lost or
 * repeated. Call `close()` on the result to stop. `EventSourceImpl` is for runtimes without a
 * global `EventSource` (Node.js before 22).
 */
export function subscribeToChanges(
  baseUrl: string,
  ids: number | readonly number[],
  handlers: ChangeHandlers,
  options: { withCredentials?: boolean; EventSourceImpl?: typeof EventSource } = {},
): EventSource {
  const base = baseUrl.replace(/\/$/, "");
  const url = typeof ids === "number"
    ? `${base}/vehicles/${ids}/changes`
    : `${base}/changes?ids=${ids.join(",")}`;
  const Impl = options.EventSourceImpl ?? globalThis.EventSource;
  const source = new Impl(url, { withCredentials: options.withCredentials ?? false });
  source.addEventListener("snapshot", (event) => {
    const message = event as MessageEvent<string>;
    handlers.snapshot?.(JSON.parse(message.data) as Snapshot, message.lastEventId);
  });
  source.addEventListener("change", (event) => {
    const message = event as MessageEvent<string>;
    handlers.change?.(JSON.parse(message.data) as Announcement, message.lastEventId);
  });
  source.addEventListener("end", (event) => {
    const message = event as MessageEvent<string>;
    handlers.end?.((JSON.parse(message.data) as { reason: string }).reason);
  });
  source.addEventListener("error", (event) => handlers.error?.(event));
  return source;
}
