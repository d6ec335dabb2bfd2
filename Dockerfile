# syntax=docker/dockerfile:1
# Agimo's container image: one statically linked binary, /agimo, on an empty
# base, running as uid/gid 65532 (nonroot). See image/README.md.
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u -d @"$(git log -1 --format=%ct)" +%Y-%m-%dT%H:%M:%SZ)" \
#     -t ghcr.io/agimo-dev/agimo:0.1.0 .
#
# Without a container daemon, image/build builds this same final stage with
# buildah: it compiles the binary on the host with the build stage's cargo
# command and flags, and passes --build-arg BINARY_FROM=prebuilt, so that the
# build stage is never used (buildah and BuildKit skip unused stages).

# `build` (compile here) or `prebuilt` (a binary from the build context).
ARG BINARY_FROM=build

FROM docker.io/library/rust:1.95.0-bookworm AS build
# The platform being built (amd64, arm64): set by BuildKit; buildah 1.28
# needs --build-arg.
ARG TARGETARCH
WORKDIR /agimo
COPY . .
# A static glibc binary (+crt-static). The explicit --target keeps build
# scripts and proc-macros dynamic: RUSTFLAGS then apply to the target only.
# No debug info (the binary is 26 MB instead of 106 MB; its symbols stay, so
# backtraces still name functions), and CARGO_HOME's location is taken out of
# the dependencies' panic messages: with the workspace's own paths relative,
# the binary does not depend on where it was built. These flags do not name
# the checkout's path, so moving it rebuilds only the workspace's crates.
# getrandom 0.3 looks glibc's getrandom() up with dlsym, which finds nothing
# in a static binary, and then reads /dev/urandom: the cfg makes it call
# getrandom() directly.
# image/build runs this cargo command on the host; keep the two the same
# (it checks that this file still contains its command).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/agimo/target \
    set -eu; \
    case "${TARGETARCH:-amd64}" in \
      amd64) arch=x86_64 ;; \
      arm64) arch=aarch64 ;; \
      *) echo "unsupported TARGETARCH $TARGETARCH" >&2; exit 1 ;; \
    esac; \
    RUSTFLAGS="-C target-feature=+crt-static -C debuginfo=0 -C strip=debuginfo --cfg getrandom_backend=\"linux_getrandom\" --remap-path-prefix=$CARGO_HOME=/cargo" \
      cargo build --release --locked --target "$arch-unknown-linux-gnu" -p agimo-controller --bin agimo; \
    install -D -m 0755 "target/$arch-unknown-linux-gnu/release/agimo" /out/agimo; \
    install -D -m 0644 image/rootfs/etc/passwd image/rootfs/etc/group -t /out/etc

# image/build's context: the binary it compiled, and image/rootfs/ from the
# checkout.
FROM scratch AS prebuilt
COPY --chmod=0755 agimo /out/agimo
COPY --chmod=0644 image/rootfs/etc/passwd image/rootfs/etc/group /out/etc/

FROM ${BINARY_FROM} AS binary

FROM scratch
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
# One layer: /agimo, /etc/passwd and /etc/group (users root, nobody and
# nonroot, as in distroless). No CA certificates: in a cluster the Kubernetes
# client trusts the service account's ca.crt; a kubeconfig without a CA uses
# system roots, which SSL_CERT_FILE can point at a mounted bundle.
COPY --from=binary /out/ /
USER 65532:65532
ENTRYPOINT ["/agimo"]
LABEL org.opencontainers.image.title="agimo" \
      org.opencontainers.image.description="Agimo, a Gateway API implementation that scales backends to zero" \
      org.opencontainers.image.source="https://github.com/agimo-dev/agimo" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
