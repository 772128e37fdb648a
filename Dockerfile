# syntax=docker/dockerfile:1
# The plugsync image: `docker build -t REGISTRY/plugsync:TAG .` at the root of the repository.
#
# Runtime base: debian:bookworm-slim with libssl3 and ca-certificates, not distroless/cc.
# git2 is built with `vendored-libgit2` (libgit2 static) and `https` + `ssh`: libssh2 is built
# from libssh2-sys' bundled sources (static too), but both use the system OpenSSL, and
# libz-sys links the system zlib, so the binary needs libssl.so.3, libcrypto.so.3 and
# libz.so.1 at run time (`ldd` says so). bookworm-slim has glibc and zlib, apt adds OpenSSL 3
# from the same Debian release the builder linked against, and ca-certificates gives reqwest
# (rustls with the native roots) and libgit2's HTTPS their trust store. A static (musl +
# vendored OpenSSL) build would need Cargo feature changes; distroless/cc does not promise
# zlib. The build below fails, rather than the pod, if any shared library is missing.
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# 1. Dependencies: only the manifest and the lock, with stub targets (Cargo.toml's [[bench]]
#    must exist to parse). These layers (download, then compile every dependency) are reused
#    until Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/pipeline.rs
RUN cargo fetch --locked
RUN cargo build --release --locked --bin plugsync

# 2. plugsync itself. The stubs are touched so Cargo sees them newer than the stub build
#    whatever the copied files' timestamps.
COPY src src
COPY templates templates
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin plugsync \
    && install -m 0755 target/release/plugsync /usr/local/bin/plugsync

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 65532 nonroot \
    && useradd --uid 65532 --gid 65532 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin nonroot \
    && install -d -o 65532 -g 65532 -m 0750 /var/cache/plugsync
COPY --from=builder /usr/local/bin/plugsync /usr/local/bin/plugsync
RUN if ldd /usr/local/bin/plugsync | grep 'not found'; then exit 1; fi \
    && /usr/local/bin/plugsync --version
ENV HOME=/tmp \
    PLUGSYNC_CACHE_DIR=/var/cache/plugsync
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/plugsync"]
CMD ["--help"]
