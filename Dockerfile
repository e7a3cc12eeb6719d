# syntax=docker/dockerfile:1
# The service as a small, non-root, read-only-friendly image:
#   docker build --build-arg GIT_SHA=$(git rev-parse --short=12 HEAD) -t vehicle-state .

# --- build -------------------------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS build
WORKDIR /app
# No query! macros need a database at build time; say so, so none ever does.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never

# Dependencies first, in a layer of their own: rebuilt only when Cargo.toml or Cargo.lock
# change, not on every edit of the service. The registry is a cache mount, kept between builds.
COPY Cargo.toml Cargo.lock build.rs ./
# The tests' support crate is a path dev-dependency: cargo reads its manifest to check the lock
# file even for a release build, which never compiles it (its manifest names its lib's path, so
# no source is needed).
COPY tests/support/Cargo.toml tests/support/Cargo.toml
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    mkdir src migrations \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

COPY src src
COPY migrations migrations
COPY seed seed
# The commit named by vehicle_state_build_info (.git is not in the build context).
ARG GIT_SHA=unknown
# touch: the stubs above are newer than these sources by mtime; make cargo rebuild the crate.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin vehicle-state

# --- run ---------------------------------------------------------------------------------------
# glibc and libgcc only (no shell, no package manager), user nonroot (65532). The binary writes
# nothing, so the root file system can be mounted read-only.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /app/target/release/vehicle-state /usr/local/bin/vehicle-state
USER 65532:65532
ENV BIND_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json \
    HEALTHCHECK_ADDR=127.0.0.1:8080
EXPOSE 8080
STOPSIGNAL SIGTERM
# No shell in the image: the binary itself asks /readyz and sets the exit code.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["vehicle-state", "healthcheck"]
ENTRYPOINT ["vehicle-state"]
CMD ["serve"]
