# im1-revalidator container image.
#
#   docker build -t im1-revalidator:0.1.0 .
#   docker run --rm --env-file deploy/env.example im1-revalidator:0.1.0 check-config
#
# Two stages: a Rust builder (the queries are checked against the committed .sqlx/ cache, so
# no database is needed to build) and a small Debian runtime holding only the binary and the
# CA certificates (supplier TLS is verified against the platform roots unless a supplier's
# IM1_<SUPPLIER>_CA_CERT is set). The binary links only glibc; the time zone database and
# the migrations are compiled in.

FROM rust:1.95-slim-bookworm AS builder
WORKDIR /build
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never

# Dependency layer: the manifests with stub targets, so this layer (every crate of
# Cargo.lock compiled) is rebuilt only when Cargo.toml or Cargo.lock change. Cargo.toml
# declares the test and bench targets explicitly, so they need stub files too.
COPY Cargo.toml Cargo.lock ./
COPY .cargo/ .cargo/
RUN mkdir -p src benches tests/it \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/sweep.rs \
    && echo 'fn main() {}' > tests/it/main.rs \
    && cargo build --release --locked \
    && rm -rf src

# The sources and what they embed at compile time: the query cache (.sqlx/), the migrations
# (sqlx::migrate!) and the OpenAPI document (include_str!). The touch makes cargo rebuild the
# crate itself: COPY keeps the context's modification times, which may be older than the
# stub build's outputs.
COPY .sqlx/ .sqlx/
COPY migrations/ migrations/
COPY docs/openapi.json docs/openapi.json
COPY src/ src/
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin im1-revalidator \
    && install -D -m 0755 target/release/im1-revalidator /out/im1-revalidator

FROM debian:bookworm-slim AS runtime
# ca-certificates is deliberately unpinned: a pinned Debian version disappears from the
# mirror at its next security update and the build breaks; the base image tag fixes the
# release (bookworm).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 im1 \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin im1
COPY --from=builder /out/im1-revalidator /usr/local/bin/im1-revalidator

LABEL org.opencontainers.image.title="im1-revalidator" \
      org.opencontainers.image.description="Revalidates stored NHS IM1 tokens against GP supplier APIs" \
      org.opencontainers.image.licenses="MIT"

# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# The admin port: /healthz, /readyz, /metrics and the RP API (only `run` binds it;
# IM1_ADMIN_ADDR, default 0.0.0.0:9187).
EXPOSE 9187
# `run` handles SIGTERM itself (stops claiming, lets in-flight checks finish within
# IM1_SHUTDOWN_GRACE, 25s by default, then exits 0): give it more than that before SIGKILL
# (docker stop -t 40, compose stop_grace_period, Kubernetes terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["im1-revalidator"]
CMD ["run"]
