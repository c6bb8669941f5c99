#!/usr/bin/env bash
# The run command: installs what is missing, builds musicgw and its sandbox providers, starts
# them, and runs the demo with musicgw-cli: one Loudly track and one Soundpiece sample, their
# status followed live, the audio downloaded, verified and saved under sandbox-out/audio. The
# sandbox keeps running afterwards (stop it with scripts/sandbox.sh stop).
set -euo pipefail
cd "$(dirname "$0")/.."
MUSICGW_CLIENT_DEPS=0 scripts/install-deps.sh
build=build/release
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j"${JOBS:-2}" --target musicgw loudly-emulator soundpiece-emulator
MUSICGW_BUILD_DIR="$build" scripts/sandbox.sh start
set -a; source sandbox-out/sandbox.env; set +a
# musicgw-cli from the Python package, installed offline into a venv over Debian's python3.
venv="$build/cli-venv"
[[ -x "$venv/bin/python" ]] || /usr/bin/python3 -m venv --system-site-packages "$venv"
"$venv/bin/pip" install --quiet --no-index --no-build-isolation --disable-pip-version-check \
  ./clients/python
rm -rf clients/python/build clients/python/src/*.egg-info
cli="$venv/bin/musicgw-cli"
echo "Providers:"; "$cli" providers
sleep 1  # the first quota reads
echo; echo "Quota before:"; "$cli" quota
echo; echo "A Loudly track:"
"$cli" generate parametric --genre House --duration 30 --energy high --provider loudly \
  --download sandbox-out/audio
echo; echo "A Soundpiece sample:"
"$cli" generate sample --prompt "dusty vinyl drum loop, 90 bpm" --duration 8 --loop \
  --provider soundpiece --download sandbox-out/audio
sleep 2  # quota is read again shortly after each generation
echo; echo "Quota after:"; "$cli" quota
echo; echo "Your operations:"; "$cli" list --limit 5
echo
echo "Audio files:"; ls -l sandbox-out/audio
echo "More: $cli --help  (target and key: set -a; . sandbox-out/sandbox.env)"
echo "Stop the sandbox: scripts/sandbox.sh stop"
