# syntax=docker/dockerfile:1

# --- build -------------------------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS build
WORKDIR /app

# Dependencies first, in a layer of their own: it is rebuilt only when Cargo.toml or Cargo.lock
# change, not on every edit of the service.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

COPY src src
COPY migrations migrations
COPY seed seed
# The stubs above are older than these sources only by mtime; touch makes cargo rebuild the crate.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin vehicle-state

# --- run ---------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# A fixed, unprivileged uid; the binary needs no writable path, so the root file system can be
# mounted read-only.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin vehicle-state
COPY --from=build /app/target/release/vehicle-state /usr/local/bin/vehicle-state
USER 10001:10001
ENV BIND_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json \
    HEALTHCHECK_ADDR=127.0.0.1:8080
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["vehicle-state", "healthcheck"]
ENTRYPOINT ["vehicle-state"]
CMD ["serve"]
