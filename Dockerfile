# syntax=docker/dockerfile:1
# musicgw: built and unit-tested on Debian 12, shipped as the binary and its runtime libraries.
#
#   docker build -t musicgw:0.1.0 .                            # the gateway (default target)
#   docker build --target sandbox -t musicgw-sandbox:0.1.0 .   # plus both provider emulators
#
# Runs as uid 65532 with a read-only root filesystem; the ledger lives on a volume at
# /var/lib/musicgw and the config is mounted at /etc/musicgw/musicgw.json.

ARG DEBIAN_IMAGE=debian:12-slim
# Shared libraries only (Debian 12 names); the build stage proves they cover every library the
# binaries load.
ARG RUNTIME_PACKAGES="ca-certificates libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623 libcurl4 libsqlite3-0 libpq5 libssl3 libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libcpp-httplib0.11"
# What the emulators need on top (they encode FLAC and MP3).
ARG SANDBOX_PACKAGES="libflac++10 libmp3lame0"

# ---- build: the toolchain from Debian's packages, a Release build, the unit tests ----
FROM ${DEBIAN_IMAGE} AS build
ARG RUNTIME_PACKAGES
ARG SANDBOX_PACKAGES
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
# Dependencies first, so source changes do not reinstall them. (This stage is thrown away, so
# the apt lists stay for the library check below.)
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN MUSICGW_CLIENT_DEPS=0 scripts/install-deps.sh
COPY . .
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMUSICGW_BUILD_BENCH=OFF \
 && cmake --build /build -j"$(nproc)" \
 && ctest --test-dir /build -L unit --output-on-failure -j"$(nproc)"
RUN mkdir -p /out/bin \
 && cp /build/services/gateway/musicgw /build/clients/musicgw-health \
       /build/emulators/loudly-emulator /build/emulators/soundpiece-emulator /out/bin/ \
 && strip /out/bin/*
# Fail here, not at container start, when a binary loads a library that the runtime packages
# (with their dependencies) do not install.
RUN closure() { apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
                  --no-breaks --no-replaces --no-enhances "$@" | grep -v '^[ <]' | sort -u; } \
 && check() { local allowed="$1"; shift; for bin in "$@"; do \
      for lib in $(ldd "$bin" | awk '/=> \//{print $3}'); do \
        pkg=$( (dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")") | head -1 | cut -d: -f1); \
        grep -qx "$pkg" <<<"$allowed" || { echo "$bin needs $lib from $pkg: add it to the packages" >&2; exit 1; }; \
      done; done; } \
 && check "$(closure ${RUNTIME_PACKAGES})" /out/bin/musicgw /out/bin/musicgw-health \
 && check "$(closure ${RUNTIME_PACKAGES} ${SANDBOX_PACKAGES})" /out/bin/loudly-emulator /out/bin/soundpiece-emulator

# ---- runtime: the gateway and the health probe, nothing else ----
FROM ${DEBIAN_IMAGE} AS runtime
ARG RUNTIME_PACKAGES
# hadolint ignore=DL3008
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${RUNTIME_PACKAGES} >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 musicgw \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin musicgw \
 && mkdir -p /var/lib/musicgw /etc/musicgw \
 && chown 65532:65532 /var/lib/musicgw
COPY --from=build /out/bin/musicgw /out/bin/musicgw-health /usr/local/bin/
USER 65532:65532
WORKDIR /var/lib/musicgw
# The ledger (ledger.path) and, for Loudly's web dialect, the rotated token state.
VOLUME ["/var/lib/musicgw"]
# gRPC, Prometheus metrics, provider webhooks.
EXPOSE 50051 9464 8080
# grpc.health.v1 on the gRPC port; NOT_SERVING while draining. (Kubernetes uses its own gRPC
# probes; this is for docker and compose.)
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/musicgw-health", "--addr=127.0.0.1:50051", "--timeout_ms=2000"]
# SIGTERM starts the drain (server.drain_deadline_seconds, 20 s by default): give the
# container at least that long to stop (docker stop -t 30).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/musicgw"]
CMD ["--config=/etc/musicgw/musicgw.json"]

# ---- sandbox: the runtime plus both provider emulators, for demos and client tests ----
FROM runtime AS sandbox
USER root
ARG SANDBOX_PACKAGES
# hadolint ignore=DL3008
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${SANDBOX_PACKAGES} >/dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/bin/loudly-emulator /out/bin/soundpiece-emulator /usr/local/bin/
USER 65532:65532

# The default target is the gateway image.
FROM runtime
