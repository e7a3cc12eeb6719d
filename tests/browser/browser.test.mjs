// The API as browsers meet it, in real headless Chromium: a page of a listed origin calls every
// endpoint (the batch POST preflighted), reads the headers CORS exposes, makes a conditional GET
// and gets a problem for a bad request; a page of an origin not listed is refused; the explore
// page draws a vehicle's timeline and looks up an instant picked on it; Swagger UI sends an instant
// as typed and shows the service's own 400; the typed client's example runs against the same server.
//
// Needs: the debug binary (`cargo build`), PostgreSQL and Redis as for `cargo test`
// (TEST_DATABASE_URL / TEST_REDIS_URL, else DATABASE_URL / REDIS_URL, else 127.0.0.1:5432 and
// :6379), `psql` (to drop the test's database), Chromium at CHROMIUM_PATH (default
// /usr/bin/chromium), and `npm ci` here. Run: `npm test`.
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, existsSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import http from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { connect as connectNats, StringCodec } from "nats";
import { chromium } from "playwright-core";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const BINARY = process.env.VEHICLE_STATE_BIN ?? path.join(ROOT, "target/debug/vehicle-state");
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
// As the machine's probe runs it: headless, as root, and with no traffic of its own.
const CHROMIUM_FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];
// How long the server may take to start (it creates, migrates and seeds its database).
const START_TIMEOUT_MS = 60_000;

const suffix = randomBytes(6).toString("hex");
const database = `vs_browser_${suffix}`;
const fromEnv = (...names) => names.map((n) => process.env[n]).find((v) => v);
const postgres = new URL(fromEnv("TEST_DATABASE_URL", "DATABASE_URL") ?? "postgres://postgres@127.0.0.1:5432/postgres");
const redis = fromEnv("TEST_REDIS_URL", "REDIS_URL") ?? "redis://127.0.0.1:6379";
// Low enough that a timeline page and a small batch are compressed (a lookup's 136 bytes are
// not), so Chromium meets compressed answers, their entity tags and a compressed 304.
const COMPRESSION_MIN_BYTES = "200";

let server, api, dashboard, stranger, browser;
const pages = [];

/** A plain page on 127.0.0.1:0, so its origin is its own: the front end calling the API. */
function pageServer(title) {
  return new Promise((resolve) => {
    const s = http.createServer((_req, res) => {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(`<!doctype html><title>${title}</title><h1>${title}</h1>`);
    });
    s.listen(0, "127.0.0.1", () => {
      pages.push(s);
      resolve(`http://127.0.0.1:${s.address().port}`);
    });
  });
}

/** Every Content-Security-Policy violation a page reports, to assert there are none. */
function policyViolations(page) {
  const seen = [];
  page.on("console", (message) => {
    if (/Content Security Policy/i.test(message.text())) seen.push(message.text());
  });
  page.on("pageerror", (error) => {
    if (/Content Security Policy/i.test(String(error))) seen.push(String(error));
  });
  return seen;
}

function startServer(allowedOrigins, extraEnv = {}, args = ["serve", "--seed", "sample"]) {
  const url = new URL(postgres);
  url.pathname = `/${database}`;
  const child = spawn(BINARY, args, {
    cwd: tmpdir(),
    env: {
      PATH: process.env.PATH,
      BIND_ADDR: "127.0.0.1:0",
      DATABASE_URL: url.toString(),
      REDIS_URL: redis,
      CACHE_KEY_PREFIX: `vs-browser-${suffix}`,
      LOG_FORMAT: "json",
      CORS_ALLOWED_ORIGINS: allowedOrigins,
      COMPRESSION_MIN_BYTES,
      ...extraEnv,
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  // Recorded now, so a server that already died is still seen to have exited.
  const exited = new Promise((resolve) => child.on("close", resolve));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the server did not start in time")), START_TIMEOUT_MS);
    let buffered = "";
    child.stdout.on("data", (chunk) => {
      buffered += chunk;
      for (const line of buffered.split("\n").slice(0, -1)) {
        let event;
        try {
          event = JSON.parse(line);
        } catch {
          continue; // not a log line of ours
        }
        if (event.message === "listening") {
          clearTimeout(timer);
          resolve({ child, exited, base: `http://${event.address}` });
        }
      }
      buffered = buffered.slice(buffered.lastIndexOf("\n") + 1);
    });
    child.on("exit", (code) => reject(new Error(`the server exited with ${code} before listening`)));
  });
}

before(async () => {
  assert.ok(existsSync(BINARY), `no ${BINARY}: run cargo build first`);
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install chromium, or set CHROMIUM_PATH`);
  dashboard = await pageServer("dashboard");
  stranger = await pageServer("somewhere else");
  // `localhost` is another origin than `127.0.0.1`: listed, to show a list is a list.
  server = await startServer(`http://localhost:5173, ${dashboard}`);
  api = server.base;
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_FLAGS });
});

after(async () => {
  await browser?.close();
  if (server) {
    server.child.kill("SIGTERM");
    await server.exited;
  }
  for (const s of pages) s.close();
  const admin = new URL(postgres);
  execFileSync("psql", [admin.toString(), "-qc", `DROP DATABASE IF EXISTS "${database}"`]);
});

test("a page of a listed origin calls every endpoint and reads the exposed headers", async () => {
  const page = await browser.newPage();
  await page.goto(dashboard);

  const seen = await page.evaluate(async (api) => {
    const headers = (r) => ({
      status: r.status,
      cache: r.headers.get("X-Cache"),
      etag: r.headers.get("ETag"),
      requestId: r.headers.get("X-Request-Id"),
      contentType: r.headers.get("Content-Type"),
    });
    const lookupUrl = `${api}/vehicles/3/timestamp/2022-09-12T10:00:00Z`;
    const first = await fetch(lookupUrl, { cache: "no-store" });
    const lookup = { ...headers(first), body: await first.json() };
    // application/json makes this a preflighted request.
    const post = await fetch(`${api}/vehicles/states`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Request-Id": "browser-batch-1" },
      body: JSON.stringify({ lookups: [{ id: 1, timestamp: "2022-09-12T10:00:00Z" }, { id: 999, timestamp: "2022-09-12T10:00:00Z" }] }),
    });
    const batch = { ...headers(post), body: await post.json() };
    const timeline = await fetch(`${api}/vehicles/3/history?limit=10`);
    const history = { ...headers(timeline), body: await timeline.json() };
    const again = await fetch(lookupUrl, { headers: { "If-None-Match": lookup.etag } });
    const conditional = { ...headers(again), body: await again.text() };
    // The timeline page is compressed (Chromium accepts gzip, br and zstd alike, and a tie
    // goes to gzip): its tag says so, and sent back it gets a 304 too.
    const page = await fetch(`${api}/vehicles/3/history?limit=10`, { headers: { "If-None-Match": history.etag } });
    const pageAgain = { ...headers(page), body: await page.text() };
    const wrong = await fetch(`${api}/vehicles/abc/timestamp/2022-09-12T10:00:00Z`);
    const bad = { ...headers(wrong), body: await wrong.json() };
    return { lookup, batch, history, conditional, pageAgain, bad };
  }, api);

  assert.equal(seen.lookup.status, 200);
  assert.equal(seen.lookup.body.state, "selling");
  assert.match(seen.lookup.cache, /^(MISS|HIT)$/);
  assert.match(seen.lookup.etag, /^"[0-9a-f]{16}"$/);
  assert.match(seen.lookup.requestId, /^[0-9a-f-]{36}$/);

  assert.equal(seen.batch.status, 200);
  assert.equal(seen.batch.requestId, "browser-batch-1", "the request id the page sent, read back");
  assert.deepEqual(seen.batch.body.results.map((r) => r.status), [200, 404]);
  assert.equal(seen.batch.body.results[1].problem.type, "/problems/vehicle-not-found");

  assert.equal(seen.history.status, 200);
  assert.deepEqual(seen.history.body.changes.map((c) => c.state), ["quoted", "selling", "sold"]);
  assert.match(seen.history.etag, /^"[0-9a-f]{16}-gzip"$/, "the tag of the gzip-compressed page");
  assert.equal(seen.pageAgain.status, 304);
  assert.equal(seen.pageAgain.etag, seen.history.etag);

  assert.equal(seen.conditional.status, 304, "If-None-Match with the answer's ETag");
  assert.equal(seen.conditional.body, "");
  assert.equal(seen.conditional.etag, seen.lookup.etag);
  assert.equal(seen.conditional.cache, "HIT");

  assert.equal(seen.bad.status, 400);
  assert.equal(seen.bad.contentType, "application/problem+json");
  assert.equal(seen.bad.body.type, "/problems/invalid-vehicle-id");
  await page.close();
});

test("a page of an origin not listed can read nothing", async () => {
  const page = await browser.newPage();
  await page.goto(stranger);

  const outcomes = await page.evaluate(async (api) => {
    const attempt = async (request) => {
      try {
        const response = await request();
        return `read ${response.status}`;
      } catch (error) {
        return `refused: ${error.name}`;
      }
    };
    return [
      // The server answers this page: an opaque (no-cors) request goes through...
      await attempt(() => fetch(`${api}/livez`, { mode: "no-cors" }).then((r) => ({ status: r.type }))),
      // ...but a page of this origin may read nothing.
      await attempt(() => fetch(`${api}/vehicles/3/timestamp/2022-09-12T10:00:00Z`)),
      await attempt(() => fetch(`${api}/vehicles/states`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ lookups: [{ id: 1, timestamp: "2022-09-12T10:00:00Z" }] }),
      })),
    ];
  }, api);

  assert.deepEqual(outcomes, ["read opaque", "refused: TypeError", "refused: TypeError"]);
  await page.close();
});

test("the explore page draws the timeline and looks up an instant picked on it", async () => {
  const page = await browser.newPage({ viewport: { width: 1100, height: 640 } });
  const violations = policyViolations(page);
  await page.goto(`${api}/explore/`);
  // It opens on the timeline of the vehicle filled in (3), with no click.
  await page.waitForSelector("rect[data-state]");
  const opened = await page.textContent("#vehicle");

  await page.fill("#id", "3");
  await page.click("#show");
  await page.waitForSelector("rect[data-state]");
  const bands = await page.$$eval("rect[data-state]", (rects) => rects.map((r) => [r.dataset.state, r.dataset.at]));
  const selling = page.locator('rect[data-state="selling"]');
  const answered = () => page.$eval("#answer", (a) => ({ state: a.dataset.state, cache: a.dataset.cache, text: a.textContent }));
  const box = await selling.boundingBox();
  await selling.click({ position: { x: 3, y: box.height / 2 } });
  await page.waitForFunction(() => document.querySelector("#answer")?.dataset.state);
  const picked = await answered();
  const instant = await page.inputValue("#instant");
  // Another instant inside the same band: the answer holds for the whole band, so it is cached.
  await page.evaluate(() => { document.querySelector("#answer").dataset.state = ""; });
  await selling.click({ position: { x: box.width - 3, y: box.height / 2 } });
  await page.waitForFunction(() => document.querySelector("#answer")?.dataset.state);
  const again = await answered();
  const later = await page.inputValue("#instant");
  // Now, by the server's clock.
  await page.evaluate(() => { document.querySelector("#answer").dataset.state = ""; });
  await page.click("#now");
  await page.waitForFunction(() => document.querySelector("#answer")?.dataset.state);
  const now = await answered();
  const vehicle = await page.textContent("#vehicle");
  mkdirSync(path.join(ROOT, "target"), { recursive: true });
  await page.screenshot({ path: path.join(ROOT, "target/explore.png"), fullPage: true });

  assert.deepEqual(bands, [
    ["quoted", "2022-09-11T09:11:45Z"],
    ["selling", "2022-09-11T23:21:38Z"],
    ["sold", "2022-09-12T12:41:41Z"],
  ]);
  assert.match(opened, /Vehicle 3: VW GOLF, 3 state changes/);
  assert.match(vehicle, /Vehicle 3: VW GOLF, 3 state changes/);
  assert.ok(instant > "2022-09-11T23:21:38Z" && instant < "2022-09-12T12:41:41Z", instant);
  assert.equal(picked.state, "selling", picked.text);
  assert.match(picked.cache, /^(MISS|HIT)$/);
  assert.ok(later > instant && later < "2022-09-12T12:41:41Z", later);
  assert.equal(again.state, "selling", again.text);
  assert.equal(again.cache, "HIT", `a second click inside the band: ${again.text}`);
  assert.equal(now.state, "sold", now.text);
  assert.match(now.text, /still now/);

  // An unknown vehicle says so, in the service's own words.
  await page.fill("#id", "999");
  await page.click("#show");
  await page.waitForSelector("#answer.error");
  assert.match(await page.textContent("#answer"), /no vehicle has id 999/);
  // Its script and style are its own files: the strict policy lets them, and blocks nothing.
  assert.deepEqual(violations, []);
  await page.close();
});

test("the explore page draws the fleet's counts over a window and shows those of a bar clicked", async () => {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  const violations = policyViolations(page);
  await page.goto(`${api}/explore/`);
  // It opens on the sample's window, every 6 hours: 13 steps, a bar per state each.
  await page.waitForSelector("rect[data-fleet-state]", { state: "attached" });
  const opened = await page.$$eval("rect[data-fleet-state]", (bars) => new Set(bars.map((b) => b.dataset.point)).size);
  const legend = await page.textContent("#fleet-legend");

  // One day a step: a bar at 2022-09-12T00:00:00Z, clicked.
  await page.fill("#fleet-every", "P1D");
  await page.click("#fleet-show");
  await page.waitForFunction(() => document.querySelectorAll("rect[data-fleet-state]").length === 12);
  const drawn = await page.$$eval("rect[data-fleet-state]", (bars) =>
    bars.map((b) => [b.dataset.point, b.dataset.fleetState, Number(b.dataset.count)]));
  await page.locator('rect[data-point="2022-09-12T00:00:00Z"][data-fleet-state="selling"]').click();
  await page.waitForFunction(() => document.querySelector("#fleet-point")?.dataset.at === "2022-09-12T00:00:00Z");
  const clicked = await page.textContent("#fleet-point");
  const served = await (await fetch(`${api}/fleet/states?at=2022-09-12T00:00:00Z`)).json();
  // The bar's vehicles are listed (GET /fleet/vehicles), and one of them opens its timeline there.
  await page.waitForSelector('#fleet-vehicles[data-count="2"]');
  const listed = await page.$$eval("#fleet-vehicles button", (buttons) => buttons.map((b) => b.textContent));
  const caption = await page.textContent("#fleet-list-caption");
  const moreHidden = await page.isHidden("#fleet-more");
  const listedServed = await (await fetch(`${api}/fleet/vehicles?state=selling&at=2022-09-12T00:00:00Z`)).json();
  await page.screenshot({ path: path.join(ROOT, "target/explore-fleet.png"), fullPage: true });
  await page.locator('#fleet-vehicles button[data-vehicle-id="3"]').click();
  await page.waitForFunction(() => document.querySelector("#answer")?.dataset.state === "selling");
  const opened3 = await page.textContent("#vehicle");
  const answered = await page.textContent("#answer");
  const instantFilled = await page.inputValue("#instant");

  // A step outside a minute to a month: the service's own 400, on the page.
  await page.fill("#fleet-every", "P1Y");
  await page.click("#fleet-show");
  await page.waitForSelector("#fleet-point.error");
  const refused = await page.textContent("#fleet-point");

  assert.equal(opened, 13);
  assert.match(legend, /quoted.*selling.*sold/);
  assert.deepEqual(
    drawn.filter(([, , n]) => n > 0),
    [
      ["2022-09-11T00:00:00Z", "quoted", 2],
      ["2022-09-12T00:00:00Z", "quoted", 1],
      ["2022-09-12T00:00:00Z", "selling", 2],
      ["2022-09-13T00:00:00Z", "quoted", 1],
      ["2022-09-13T00:00:00Z", "selling", 1],
      ["2022-09-13T00:00:00Z", "sold", 1],
    ],
  );
  assert.equal(clicked, "At 2022-09-12T00:00:00Z: 1 quoted, 2 selling, 0 sold; 3 in all.");
  assert.deepEqual(served.states, { quoted: 1, selling: 2, sold: 0 });
  assert.deepEqual(listed, [
    "2: AUDI A4, selling since 2022-09-11T17:03:17Z",
    "3: VW GOLF, selling since 2022-09-11T23:21:38Z",
  ]);
  assert.deepEqual(listedServed.vehicles.map((v) => v.id), [2, 3]);
  assert.equal(caption, "2 selling at 2022-09-12T00:00:00Z:");
  assert.equal(moreHidden, true);
  assert.match(opened3, /^Vehicle 3: VW GOLF, 3 state changes$/);
  assert.match(answered, /^At 2022-09-12T00:00:00Z vehicle 3 was selling \(since 2022-09-11T23:21:38Z, until 2022-09-12T12:41:41Z\)/);
  assert.equal(instantFilled, "2022-09-12T00:00:00Z");
  assert.match(refused, /^400: `every` must be/);
  assert.deepEqual(violations, []);
  await page.close();
});

/** In Swagger UI: opens an operation, fills its parameters as a person types them, runs it. */
async function tryOut(page, operation, values) {
  const block = page.locator(`#operations-vehicles-${operation}`);
  if (!(await block.locator(".try-out__btn.cancel").count())) {
    if (!(await block.locator(".try-out__btn").count())) await block.locator(".opblock-summary").first().click();
    await block.locator(".try-out__btn").click();
  }
  for (const [name, value] of Object.entries(values)) {
    await block.locator(`tr[data-param-name="${name}"] input`).fill(value);
  }
  // What Swagger UI received, from the network, and then the same status on the page.
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().startsWith(`${api}/vehicles/`)),
    block.locator("button.execute").click(),
  ]);
  const status = String(response.status());
  await page.waitForFunction(
    ([id, status]) =>
      document.querySelector(`#${id} .live-responses-table tbody .response-col_status`)?.textContent.trim() === status,
    [`operations-vehicles-${operation}`, status],
  );
  return { url: response.url(), status, body: await response.text() };
}

test("in Swagger UI an instant is sent as typed, and a bad one meets the service's own 400", async () => {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const violations = policyViolations(page);
  await page.goto(`${api}/swagger-ui/`);
  await page.waitForSelector("#operations-vehicles-vehicle_state_at");

  // No offset: the explorer does not stop it, so the service says what is missing.
  const bare = await tryOut(page, "vehicle_state_at", { id: "3", ts: "2022-09-12" });
  // A `+` typed as it is (Swagger UI encodes it), in the path and in a query string.
  const offset = await tryOut(page, "vehicle_state_at", { id: "3", ts: "2022-09-12T12:00:00+02:00" });
  const window = await tryOut(page, "vehicle_history", { id: "3", from: "2022-09-12T12:00:00+02:00", to: "2022-09-12T14:00:00+02:00" });
  await page.close();

  assert.deepEqual(violations, [], "Swagger UI runs under its Content-Security-Policy");

  assert.equal(bare.status, "400", bare.body);
  assert.match(bare.body, /\/problems\/invalid-timestamp/);
  assert.match(bare.body, /offset/);
  assert.equal(offset.status, "200", offset.body);
  assert.match(offset.url, /2022-09-12T12%3A00%3A00%2B02%3A00$/);
  assert.match(offset.body, /"state":"selling"/);
  assert.match(offset.body, /"timestamp":"2022-09-12T10:00:00Z"/);
  assert.equal(window.status, "200", window.body);
  assert.match(window.url, /from=2022-09-12T12%3A00%3A00%2B02%3A00/);
  assert.match(window.body, /"state":"selling"/);
});

test("with API keys on, Swagger UI's Authorize sends the key and the service answers", async () => {
  const dir = path.join(tmpdir(), `vs-browser-keys-${suffix}`);
  mkdirSync(dir, { recursive: true });
  const keys = path.join(dir, "api-keys");
  const key = randomBytes(16).toString("hex");
  const digest = createHash("sha256").update(key).digest("hex");
  writeFileSync(keys, `# the browser test's key\nswagger ${digest}\n`);
  const keyed = await startServer("", { AUTH_API_KEYS_FILE: keys, CACHE_KEY_PREFIX: `vs-browser-keys-${suffix}` });
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  try {
    await page.goto(`${keyed.base}/swagger-ui/`);
    await page.waitForSelector("#operations-vehicles-vehicle_state_at");
    const base = api;
    api = keyed.base;
    const without = await tryOut(page, "vehicle_state_at", { id: "3", ts: "2022-09-12T10:00:00Z" });

    await page.locator("button.authorize").first().click();
    const scheme = page.locator(".auth-container").filter({ hasText: "X-API-Key" });
    await scheme.locator("input").fill(key);
    await scheme.locator("button.authorize").click();
    await page.locator(".btn-done, .close-modal").first().click();
    const withKey = await tryOut(page, "vehicle_state_at", { id: "3", ts: "2022-09-12T10:00:00Z" });
    api = base;

    assert.equal(without.status, "401", without.body);
    assert.match(without.body, /\/problems\/unauthorized/);
    assert.equal(withKey.status, "200", withKey.body);
    assert.match(withKey.body, /"state":"selling"/);
  } finally {
    await page.close();
    keyed.child.kill("SIGTERM");
    await keyed.exited;
  }
});

test("the typed client's example calls every endpoint", () => {
  const example = path.join(ROOT, "clients/typescript/dist/example.js");
  assert.ok(existsSync(example), `no ${example}: run npm ci && npm run build in clients/typescript`);

  const output = execFileSync("node", [example, api], { encoding: "utf8" });

  assert.match(output, /^lookup: vehicle 3 was selling since 2022-09-11T23:21:38Z \(X-Cache: (MISS|HIT)\)$/m);
  assert.match(output, /^now: sold until further notice; polled again: 304$/m);
  assert.match(output, /^batch: 200 quoted$/m);
  assert.match(output, /^batch: 404 \/problems\/vehicle-not-found$/m);
  assert.match(output, /^history: quoted from 2022-09-11T09:11:45Z until 2022-09-11T23:21:38Z$/m);
  assert.match(output, /^history: sold from 2022-09-12T12:41:41Z until now$/m);
  assert.match(output, /^fleet: at 2022-09-12T12:00:00Z, 1 quoted, 2 selling, 0 sold; 3 in all$/m);
  assert.match(output, /^fleet: selling at 2022-09-12T12:00:00Z, vehicles 2, 3$/m);
  assert.match(output, /^missing: 404 \/problems\/vehicle-not-found$/m);
});

/** A port nothing listens on now, to start a server on and start it again on after a stop. */
function freePort() {
  return new Promise((resolve) => {
    const probe = net.createServer();
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

async function waitFor(what, check, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await check()) return;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test("the explore page follows a vehicle live, and misses no change across its replica's restart", async () => {
  // The change feed's parts, as in production: a nats-server of this test's own (a current
  // release: NATS_SERVER_BIN, as .ci/checks sets it), ingest, and a replica following the feed
  // on a fixed port, so that it comes back on the same address.
  const natsBin = process.env.NATS_SERVER_BIN ?? path.join(ROOT, "target/nats-venv/bin/nats-server");
  const store = mkdtempSync(path.join(tmpdir(), "vs-browser-nats-"));
  const natsPort = await freePort();
  const natsServer = spawn(natsBin, ["-js", "-a", "127.0.0.1", "-p", String(natsPort), "-sd", store], { stdio: "ignore" });
  const natsUrl = `nats://127.0.0.1:${natsPort}`;
  const dbUrl = new URL(postgres);
  dbUrl.pathname = `/${database}`;
  const ingestPort = await freePort();
  const ingest = spawn(BINARY, ["ingest"], {
    cwd: tmpdir(),
    env: {
      PATH: process.env.PATH, DATABASE_URL: dbUrl.toString(), NATS_URL: natsUrl,
      INGEST_BIND_ADDR: `127.0.0.1:${ingestPort}`, MIGRATE_ON_START: "false", LOG_FORMAT: "json", RUST_LOG: "warn",
    },
    stdio: "ignore",
  });
  const port = await freePort();
  const env = { NATS_URL: natsUrl, BIND_ADDR: `127.0.0.1:${port}`, MIGRATE_ON_START: "false" };
  let replica = await startServer("", env, ["serve"]);
  let nc;
  try {
    await waitFor("ingest ready", async () => (await fetch(`http://127.0.0.1:${ingestPort}/readyz`)).ok);
    nc = await connectNats({ servers: natsUrl });
    const js = nc.jetstream();
    const codec = StringCodec();
    const publish = (eventId, state, timestamp) =>
      js.publish("vehicles.state_changed", codec.encode(JSON.stringify({ eventId, vehicleId: 3, state, timestamp })));

    const page = await browser.newPage();
    const violations = policyViolations(page);
    await page.goto(`${replica.base}/explore/`);
    await page.waitForSelector("#live:has-text('Live: watching vehicle 3')");
    await publish("live-1", "selling", "2022-09-14T00:00:00Z");
    await page.waitForSelector('#timeline rect[data-at="2022-09-14T00:00:00Z"]', { timeout: 10_000 });
    assert.match(await page.textContent("#live"), /changed \(selling at 2022-09-14T00:00:00Z\); it is now selling/);

    // The replica stops (its stream ends, saying so) and comes back; a change made meanwhile
    // reaches the page when the browser reconnects with the last event's id.
    replica.child.kill("SIGTERM");
    await replica.exited;
    await publish("live-2", "sold", "2022-09-15T00:00:00Z");
    replica = await startServer("", env, ["serve"]);
    await page.waitForSelector('#timeline rect[data-at="2022-09-15T00:00:00Z"]', { timeout: 20_000 });
    await publish("live-3", "quoted", "2022-09-10T00:00:00Z");
    await page.waitForSelector('#timeline rect[data-at="2022-09-10T00:00:00Z"]', { timeout: 10_000 });

    const ids = (await page.getAttribute("#live", "data-ids")).split(",").map(Number);
    assert.equal(ids.length, 3, `each change once: ${ids}`);
    assert.ok(ids[0] < ids[1] && ids[1] < ids[2], `in the feed's order: ${ids}`);
    assert.deepEqual(violations, []);
    await page.close();
  } finally {
    await nc?.close();
    replica.child.kill("SIGTERM");
    await replica.exited;
    ingest.kill("SIGTERM");
    natsServer.kill("SIGTERM");
    await new Promise((r) => natsServer.on("close", r));
    rmSync(store, { recursive: true, force: true });
  }
});
