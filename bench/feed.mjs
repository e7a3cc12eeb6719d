// The change feed's benchmark client (bench/feed runs it with the processes it starts): publishes
// state changes as a publisher would, and measures what users see.
//
//   node bench/feed.mjs latency <nats-url> <replica-url>...   commit to every replica answering
//   node bench/feed.mjs churn <nats-url> <per-second> <seconds>  changes in the background
//   node bench/feed.mjs fanout <nats-url> <replica-url> <streams> <per-second> <seconds>
//
// Prints one JSON object. The NATS client is the browser tests' pinned `nats` (tests/browser).
import { createRequire } from "node:module";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const { connect, StringCodec } = createRequire(path.join(ROOT, "tests/browser/package.json"))("nats");
const codec = StringCodec();
const [mode, natsUrl, ...rest] = process.argv.slice(2);

const quantile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
const summary = (ms) => {
  const sorted = [...ms].sort((a, b) => a - b);
  return { n: sorted.length, p50_ms: quantile(sorted, 0.5), p90_ms: quantile(sorted, 0.9), p99_ms: quantile(sorted, 0.99), max_ms: sorted[sorted.length - 1] };
};
const STATES = ["quoted", "selling", "sold"];
let serial = 0;

async function publisher() {
  const nc = await connect({ servers: natsUrl });
  const js = nc.jetstream();
  // The instant is the publisher's clock, as a live system's: the change is the vehicle's latest.
  const publish = (vehicleId, state, at = new Date()) =>
    js.publish(
      "vehicles.state_changed",
      codec.encode(JSON.stringify({ eventId: `bench-${process.pid}-${serial++}`, vehicleId, state, timestamp: at.toISOString() })),
    );
  return { nc, publish };
}

async function stateNow(base, id) {
  const response = await fetch(`${base}/vehicles/${id}/timestamp/now`);
  const body = await response.json();
  return body.state;
}

// Per change: both replicas hold the vehicle's current answer (asked twice each: the second is a
// hit), the change is published, and every replica is asked `now` until it answers the new state.
// The time from publish to the last replica's answer bounds the time from ingest's commit.
async function latency(replicas, changes = 1000, first = 50_001) {
  const { nc, publish } = await publisher();
  // When each announcement reached this client (core NATS, on the change feed's subjects):
  // within a millisecond of ingest's commit, so announced-to-answered is commit-to-answered.
  const announcedAt = new Map();
  const feed = nc.subscribe("vehicle-state.changes.>");
  (async () => {
    for await (const message of feed) announcedAt.set(Number(message.subject.split(".").pop()), performance.now());
  })();
  const took = [];
  const fromAnnouncement = [];
  let stale = 0;
  for (let i = 0; i < changes; i++) {
    const id = first + i;
    for (const base of replicas) {
      await stateNow(base, id);
      await stateNow(base, id);
    }
    const before = await stateNow(replicas[0], id);
    const next = STATES[(STATES.indexOf(before) + 1) % STATES.length];
    const started = performance.now();
    await publish(id, next);
    for (const base of replicas) {
      for (;;) {
        if ((await stateNow(base, id)) === next) break;
        stale++;
        if (performance.now() - started > 60_000) throw new Error(`vehicle ${id}: ${base} never answered ${next}`);
      }
    }
    const answered = performance.now();
    took.push(answered - started);
    if (announcedAt.has(id)) fromAnnouncement.push(answered - announcedAt.get(id));
  }
  await nc.close();
  return {
    changes, stale_answers_while_waiting: stale,
    publish_to_every_replica: summary(took),
    announced_to_every_replica: summary(fromAnnouncement),
  };
}

async function churn(perSecond, seconds, first = 60_001) {
  const { nc, publish } = await publisher();
  const end = Date.now() + seconds * 1000;
  let sent = 0;
  while (Date.now() < end) {
    const tick = Date.now();
    const batch = [];
    for (let i = 0; i < perSecond / 10; i++) batch.push(publish(first + (sent++ % 10_000), STATES[sent % 3]));
    await Promise.all(batch);
    await new Promise((r) => setTimeout(r, Math.max(0, 100 - (Date.now() - tick))));
  }
  await nc.close();
  return { sent };
}

// Opens `streams` streams of changes (each on one of 1,000 vehicles, 10 per vehicle at 10,000),
// one more that never reads, then publishes `perSecond` changes for `seconds`, each on one of the
// watched vehicles, and counts what every stream received and how late (from the event's own
// instant, the publisher's clock).
async function fanout(base, streams, perSecond, seconds) {
  const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
  const url = new URL(base);
  const vehicles = 1000;
  const late = [];
  let received = 0, snapshots = 0, ended = 0;
  const open = (id, onData) =>
    new Promise((resolve, reject) => {
      const request = http.get({ host: url.hostname, port: url.port, path: `/vehicles/${id}/changes`, agent }, (response) => {
        if (response.statusCode !== 200) {
          let body = "";
          response.on("data", (c) => (body += c));
          response.on("end", () => reject(new Error(`stream ${id}: ${response.statusCode} ${body}`)));
          return;
        }
        response.setEncoding("utf8");
        onData(response);
        resolve(response);
      });
      request.on("error", reject);
    });
  const sockets = [];
  for (let s = 0; s < streams; s++) {
    sockets.push(
      await open(70_001 + (s % vehicles), (response) => {
        let buffer = "";
        response.on("data", (chunk) => {
          buffer += chunk;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            if (block.includes("event: snapshot")) snapshots++;
            if (block.includes("event: end")) ended++;
            const data = block.split("\n").find((l) => l.startsWith("data: "));
            if (block.includes("event: change") && data) {
              received++;
              late.push(Date.now() - Date.parse(JSON.parse(data.slice(6)).change.timestamp));
            }
          }
        });
      }),
    );
  }
  // A client that opens a stream and never reads it.
  const slow = await open(70_001, (response) => response.pause());
  const { nc, publish } = await publisher();
  const started = Date.now();
  let sent = 0;
  while (Date.now() - started < seconds * 1000) {
    const tick = Date.now();
    const batch = [];
    for (let i = 0; i < perSecond / 10; i++) batch.push(publish(70_001 + (sent++ % vehicles), STATES[sent % 3]));
    await Promise.all(batch);
    await new Promise((r) => setTimeout(r, Math.max(0, 100 - (Date.now() - tick))));
  }
  const publishSeconds = (Date.now() - started) / 1000;
  // Until the last events arrive (or 10 s).
  const expected = sent * (streams / vehicles);
  const deadline = Date.now() + 10_000;
  while (received < expected && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  await nc.close();
  for (const s of sockets) s.destroy();
  slow.destroy();
  return {
    streams, sent, publish_per_second: Math.round(sent / publishSeconds), snapshots,
    events_expected: expected, events_received: received, ended_by_server: ended,
    publish_to_stream: summary(late),
  };
}

let result;
if (mode === "latency") result = await latency(rest);
else if (mode === "churn") result = await churn(Number(rest[0]), Number(rest[1]));
else if (mode === "fanout") result = await fanout(rest[0], Number(rest[1]), Number(rest[2]), Number(rest[3]));
else throw new Error(`unknown mode ${mode}`);
console.log(JSON.stringify(result));
process.exit(0);
