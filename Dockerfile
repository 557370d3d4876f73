# syntax=docker/dockerfile:1
# The mailflow image: the `mailflow` binary on Debian 12, run as a non-root
# user. The Kubernetes manifests in k8s/ mount the configuration at
# /etc/mailflow/config/mailflow.toml, the path CMD names; elsewhere:
#   docker build -t mailflow:0.1.0 .
#   docker run -v "$PWD/mailflow.toml:/etc/mailflow/config/mailflow.toml:ro" -p 25:2525 mailflow:0.1.0
# tests/tests/k8s_manifests.rs checks this file against the workspace and the manifests.

# Build: the toolchain of the workspace's rust-version. rdkafka builds
# librdkafka from source with its configure script and make (bash, a C
# compiler, python3 for the linker script), and links the system zlib found
# through pkg-config.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config python3 zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The release profile keeps line tables for profiling on developer machines;
# the image does without them.
ENV CARGO_PROFILE_RELEASE_DEBUG=0
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p mailflow-actors --bin mailflow \
    && install -m 0755 target/release/mailflow /usr/local/bin/mailflow

# Run: the binary needs libc, libm, libgcc_s and libz, all in bookworm-slim.
# mailflow's own TLS trusts the Mozilla roots it is built with;
# ca-certificates adds the system bundle (/etc/ssl/certs/ca-certificates.crt)
# for `[transport] extra_ca` when a next hop's CA is only there.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# uid and gid 10001: the manifests' runAsUser, runAsGroup and fsGroup.
RUN groupadd --system --gid 10001 mailflow \
    && useradd --system --uid 10001 --gid mailflow --home-dir /var/lib/mailflow --shell /usr/sbin/nologin mailflow \
    && install -d -o mailflow -g mailflow -m 0750 /var/lib/mailflow \
    && install -d -m 0755 /etc/mailflow/config
COPY --from=build /usr/local/bin/mailflow /usr/local/bin/mailflow
# The built-in default and relative paths (var/) land in the user's home.
WORKDIR /var/lib/mailflow
USER 10001:10001
# SMTP, submission and the admin API, as k8s/base/mailflow.toml binds them.
EXPOSE 2525 2587 8025
# SIGTERM (the runtime's default stop signal) starts a graceful drain: new
# connections get 421 4.3.2, open transactions finish, deliveries in flight
# are recorded, consumer groups are left; `[server] drain_timeout` (25s) fits
# inside the default grace period of 30s.
ENTRYPOINT ["mailflow"]
CMD ["serve", "--config", "/etc/mailflow/config/mailflow.toml"]
