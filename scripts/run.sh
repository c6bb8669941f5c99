#!/usr/bin/env bash
# The run command: installs what is missing, builds musicgw and its sandbox providers, starts
# them, and runs the demo: one Loudly track and one Soundpiece sample, their status changes
# streamed, the audio saved under sandbox-out/. The sandbox keeps running afterwards
# (stop it with scripts/sandbox.sh stop).
set -euo pipefail
cd "$(dirname "$0")/.."
MUSICGW_CLIENT_DEPS=0 scripts/install-deps.sh
build=build/release
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j"${JOBS:-2}" --target musicgw loudly-emulator soundpiece-emulator musicgw-demo musicgw-health
MUSICGW_BUILD_DIR="$build" scripts/sandbox.sh start
set -a; source sandbox-out/sandbox.env; set +a
# The generation quota each provider account has left, as /metrics shows it.
quota() {
  curl -s "$MUSICGW_METRICS_URL" |
    grep -E '^musicgw_provider_quota_remaining\{.*resource="(generate_vega_song|GENERATE_[A-Z0-9_]+|credits)"' || true
}
sleep 1  # the first quota reads
echo "Provider quota before:"; quota
"$build/clients/musicgw-demo" --target="$MUSICGW_TARGET" --out_dir=sandbox-out/audio
sleep 2  # quota is read again shortly after each generation
echo "Provider quota after:"; quota
echo
echo "Audio files:"; ls -l sandbox-out/audio
echo "Metrics: curl -s $MUSICGW_METRICS_URL | grep musicgw_provider_quota"
echo "Stop the sandbox: scripts/sandbox.sh stop"
