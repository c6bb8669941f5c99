#!/usr/bin/env bash
# sandbox.sh start [--postgres]|stop|status — both provider emulators and musicgw wired to them,
# on free loopback ports. With --postgres: a private PostgreSQL cluster (Debian's postgresql
# package, run as 'nobody' when started as root, on a unix socket only) and two musicgw replicas
# sharing it as their ledger (sandbox.env: MUSICGW_TARGET is the first, MUSICGW_TARGETS both). Binaries come from $MUSICGW_BUILD_DIR (default build/release). State, logs and
# sandbox.env (MUSICGW_TARGET, MUSICGW_API_KEY, ...) go to $MUSICGW_SANDBOX_DIR (default
# sandbox-out). Test-only keys are generated per run; nothing here is a real credential.
# Benchmarks tune it: $MUSICGW_SANDBOX_LOUDLY_FLAGS and $MUSICGW_SANDBOX_SOUNDPIECE_FLAGS are
# appended to the emulators' flags (the last value of a flag wins); $MUSICGW_SANDBOX_CREDITS
# (Soundpiece credits, emulator and config) and $MUSICGW_SANDBOX_SAMPLE_BUDGET (the tenant's daily
# SAMPLE budget) default to 1000.
set -euo pipefail
cd "$(dirname "$0")/.."
build="${MUSICGW_BUILD_DIR:-build/release}"
out="${MUSICGW_SANDBOX_DIR:-sandbox-out}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

wait_for_line() {  # file pattern seconds
  for _ in $(seq 1 $(( $3 * 10 ))); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "sandbox: timed out waiting for '$2' in $1" >&2
  tail -5 "$1" >&2 || true
  return 1
}

stop() {
  for name in musicgw musicgw-2 soundpiece loudly; do
    if [[ -f "$out/$name.pid" ]]; then
      kill "$(cat "$out/$name.pid")" 2>/dev/null || true
      rm -f "$out/$name.pid"
    fi
  done
  stop_postgres
}

# --- PostgreSQL (--postgres) -------------------------------------------------------------------
pg_bin() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [[ -x "$bin/initdb" && -x "$bin/postgres" ]] || {
    echo "sandbox: PostgreSQL server binaries not found (scripts/install-deps.sh installs postgresql)" >&2
    return 1
  }
  echo "$bin"
}

# PostgreSQL refuses to run as root: then it runs as 'nobody', in a directory of its own under
# /tmp (the sandbox folder may not be reachable for that user).
as_pg_user() {
  if [[ $(id -u) -eq 0 ]]; then
    setpriv --reuid=nobody --regid="$(id -gn nobody)" --clear-groups -- "$@"
  else
    "$@"
  fi
}

start_postgres() {
  local bin pg
  bin=$(pg_bin)
  pg=$(mktemp -d /tmp/musicgw-sandbox-pg.XXXXXX)
  chmod 755 "$pg"
  [[ $(id -u) -eq 0 ]] && chown nobody "$pg"
  echo "$pg" >"$out/postgres.dir"
  as_pg_user "$bin/initdb" -D "$pg/data" -U musicgw --auth=trust --no-sync -E UTF8 --locale=C \
    >"$out/postgres-initdb.log" 2>&1 || { echo "sandbox: initdb failed, see $out/postgres-initdb.log" >&2; return 1; }
  # No TCP listener: the socket in $pg is the only way in.
  as_pg_user "$bin/postgres" -D "$pg/data" -k "$pg" -c listen_addresses= -c max_connections=100 \
    >"$out/postgres.log" 2>&1 &
  echo $! >"$out/postgres.pid"
  for _ in $(seq 1 300); do
    "$bin/pg_isready" -q -h "$pg" -U musicgw && break
    sleep 0.1
  done
  "$bin/pg_isready" -q -h "$pg" -U musicgw || { echo "sandbox: PostgreSQL did not start, see $out/postgres.log" >&2; return 1; }
  "$bin/psql" -q -h "$pg" -U musicgw -d postgres -c 'CREATE DATABASE musicgw' >/dev/null
  PG_DSN="host=$pg user=musicgw dbname=musicgw"
}

stop_postgres() {
  if [[ -f "$out/postgres.pid" ]]; then
    local pid
    pid=$(cat "$out/postgres.pid")
    kill -INT "$pid" 2>/dev/null || true  # fast shutdown
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$out/postgres.pid"
  fi
  if [[ -f "$out/postgres.dir" ]]; then
    local pg
    pg=$(cat "$out/postgres.dir")
    [[ "$pg" == /tmp/musicgw-sandbox-pg.* ]] && rm -rf "$pg"
    rm -f "$out/postgres.dir"
  fi
}

start() {
  local postgres=0
  [[ "${1:-}" == "--postgres" ]] && postgres=1
  stop
  # webhook_port: the first gateway's, where the emulator posts for every replica (set once that
  # gateway listens; until then each config names its own).
  local loudly_port sp_port grpc_port metrics_port webhook_port=""
  loudly_port=$(free_port); sp_port=$(free_port)
  local api_key="mgw_sandbox_$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
  local loudly_refresh="sandbox-refresh-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
  local sp_key="spk_sandbox_$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
  local whsec="whsec_$(python3 -c 'import base64,secrets; print(base64.b64encode(secrets.token_bytes(24)).decode())')"
  local data="$out/emulator-data"
  mkdir -p "$data"

  "$build/emulators/loudly-emulator" --host=127.0.0.1 --port="$loudly_port" --data_dir="$data/loudly" \
    --client_id=1_sandbox --refresh_token="$loudly_refresh" --song_delay_ms=3000 \
    ${MUSICGW_SANDBOX_LOUDLY_FLAGS:-} >"$out/loudly.log" 2>&1 &
  echo $! >"$out/loudly.pid"
  "$build/emulators/soundpiece-emulator" --host=127.0.0.1 --port="$sp_port" --data_dir="$data/soundpiece" \
    --api_key="$sp_key" --webhook_secret="$whsec" --processing_ms=2000 --credits="${MUSICGW_SANDBOX_CREDITS:-1000}" \
    ${MUSICGW_SANDBOX_SOUNDPIECE_FLAGS:-} >"$out/soundpiece.log" 2>&1 &
  echo $! >"$out/soundpiece.pid"
  wait_for_line "$out/loudly.log" "listening on" 20
  wait_for_line "$out/soundpiece.log" "listening on" 20

  # Secrets reach the gateway through files, as on Kubernetes.
  umask 077
  mkdir -p "$out/secrets"
  printf %s "$loudly_refresh" >"$out/secrets/loudly_refresh_token"
  printf %s "$sp_key" >"$out/secrets/soundpiece_api_key"
  printf %s "$whsec" >"$out/secrets/soundpiece_webhook_secret"
  local key_hash
  key_hash=$(printf %s "$api_key" | sha256sum | cut -d' ' -f1)
  # The embedded SQLite ledger, or with --postgres the shared one (the DSN is a secret file like
  # the others; the Loudly token then lives in the ledger, not in a state file).
  local ledger token_state
  if (( postgres )); then
    start_postgres
    printf %s "$PG_DSN" >"$out/secrets/postgres_dsn"
    ledger='{"postgres": {"dsn": {"file": "'"$out"'/secrets/postgres_dsn"}, "pool_size": 4}, "replica_id": "REPLICA"}'
    token_state=""
  else
    ledger='{"path": "'"$out"'/ledger.db"}'
    token_state=',
     "token_state_file": "'"$out"'/loudly-token.json"'
  fi
  write_config() {  # file grpc_port metrics_port webhook_port replica_id
    cat >"$1" <<JSON
{
  "server": {"grpc_listen": "127.0.0.1:$2", "metrics_listen": "127.0.0.1:$3",
             "webhook_listen": "127.0.0.1:$4", "drain_deadline_seconds": 5},
  "ledger": ${ledger//REPLICA/$5},
  "operations": {"deadline_seconds": 300, "watch_heartbeat_seconds": 5,
                 "quota_refresh_seconds": 10},
  "providers": [
    {"name": "loudly-sandbox", "type": "loudly", "dialect": "web",
     "base_url": "http://127.0.0.1:$loudly_port", "client_id": "1_sandbox",
     "refresh_token": {"file": "$out/secrets/loudly_refresh_token"}$token_state},
    {"name": "soundpiece-sandbox", "type": "soundpiece",
     "base_url": "http://127.0.0.1:$sp_port",
     "api_key": {"file": "$out/secrets/soundpiece_api_key"},
     "webhook_secrets": {"file": "$out/secrets/soundpiece_webhook_secret"},
     "callback_url": "http://127.0.0.1:${webhook_port:-$4}/webhooks/soundpiece",
     "credits": {"balance": ${MUSICGW_SANDBOX_CREDITS:-1000}, "since": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"}}
  ],
  "tenants": [
    {"name": "sandbox", "api_key_sha256": ["$key_hash"],
     "budgets": [{"task": "SAMPLE", "limit": ${MUSICGW_SANDBOX_SAMPLE_BUDGET:-1000}, "period": "day"}]}
  ]
}
JSON
  }
  # start_gateway NAME REPLICA_ID: the gateway NAME (its .json, .out, .log and .pid in $out) on
  # three free ports, which it sets in gw_grpc, gw_metrics and gw_webhook. Another process (tests
  # run side by side) may take a free port before the gateway binds it, so a start that could not
  # listen is retried on fresh ports.
  local gw_grpc gw_metrics gw_webhook
  start_gateway() {
    local name=$1 replica=$2 pid
    for _ in 1 2 3 4 5; do
      gw_grpc=$(free_port); gw_metrics=$(free_port); gw_webhook=$(free_port)
      write_config "$out/$name.json" "$gw_grpc" "$gw_metrics" "$gw_webhook" "$replica"
      "$build/services/gateway/musicgw" --config="$out/$name.json" >"$out/$name.out" \
        2>"$out/$name.log" &
      pid=$!
      echo "$pid" >"$out/$name.pid"
      for _ in $(seq 1 300); do
        grep -q "musicgw listening" "$out/$name.out" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      if kill -0 "$pid" 2>/dev/null || ! grep -qs "cannot listen" "$out/$name.log" "$out/$name.out"; then
        echo "sandbox: timed out waiting for 'musicgw listening' in $out/$name.out" >&2
        tail -5 "$out/$name.log" >&2 || true
        return 1
      fi
      echo "sandbox: $name could not listen on its ports (taken meanwhile); trying others" >&2
    done
    echo "sandbox: $name could not listen on five sets of free ports" >&2
    return 1
  }
  start_gateway musicgw gw-1
  grpc_port=$gw_grpc metrics_port=$gw_metrics webhook_port=$gw_webhook
  local targets="127.0.0.1:$grpc_port"
  if (( postgres )); then
    start_gateway musicgw-2 gw-2
    targets="$targets,127.0.0.1:$gw_grpc"
  fi
  cat >"$out/sandbox.env" <<ENV
MUSICGW_TARGET=127.0.0.1:$grpc_port
MUSICGW_TARGETS=$targets
MUSICGW_API_KEY=$api_key
MUSICGW_METRICS_URL=http://127.0.0.1:$metrics_port/metrics
MUSICGW_WEBHOOK_URL=http://127.0.0.1:$webhook_port/webhooks/soundpiece
LOUDLY_EMULATOR_URL=http://127.0.0.1:$loudly_port
SOUNDPIECE_EMULATOR_URL=http://127.0.0.1:$sp_port
ENV
  echo "sandbox: musicgw on $targets (metrics of the first :$metrics_port), Loudly emulator :$loudly_port, Soundpiece emulator :$sp_port"
  (( postgres )) && echo "sandbox: ledger on PostgreSQL (socket in $(cat "$out/postgres.dir"), log $out/postgres.log)"
  echo "sandbox: settings in $out/sandbox.env; logs in $out/*.log"
}

case "${1:-}" in
  start) start "${2:-}" ;;
  stop) stop ;;
  status) for n in loudly soundpiece musicgw musicgw-2 postgres; do
            [[ -f "$out/$n.pid" ]] || [[ $n != musicgw-2 && $n != postgres ]] || continue
            if [[ -f "$out/$n.pid" ]] && kill -0 "$(cat "$out/$n.pid")" 2>/dev/null; then echo "$n: running"; else echo "$n: stopped"; fi
          done ;;
  *) echo "usage: sandbox.sh start [--postgres]|stop|status" >&2; exit 2 ;;
esac
