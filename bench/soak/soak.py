#!/usr/bin/python3
"""Chaos soak: the gateway under mixed load from three tenants, with faults on every emulator
call path and kill -9 of the gateway every 5-20 s (restarted each time).

    bench/soak/soak.py [--build build/asan] [--minutes 10] [--seed 1] [--record]

Reports (and with --record appends to bench/soak/results.md, which bench/RESULTS.md shows):
  - operations lost: accepted by Generate (an operation name came back) but unknown to the
    gateway at the end (must be 0);
  - duplicate paid generations: upstream jobs the emulators created beyond one per gateway
    operation attempt on them (must be 0), from the emulators' own /_emulator/stats;
  - sanitizer reports in every gateway and emulator log (must be 0 on the ASan+UBSan build);
  - RSS: each emulator at start and end; the gateway at the same age in each incarnation.
Everything runs on loopback; every process it starts dies with it (PR_SET_PDEATHSIG).
"""
import argparse
import ctypes
import glob
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import base64
import hashlib
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TENANTS = {"alpha": "soak-alpha-key", "bravo": "soak-bravo-key", "charlie": "soak-charlie-key"}
SANITIZER = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|UndefinedBehaviorSanitizer")

# Faults on every call path of both providers (prefix rules), seeded so a run can be repeated.
LOUDLY_FAULTS = [
    {"match": "* /*", "probability": 0.03, "action": "status", "status": 503},
    {"match": "* /*", "probability": 0.02, "action": "rate_limit", "retry_after": 1},
    {"match": "* /*", "probability": 0.03, "action": "latency", "delay_ms": 700},
    {"match": "POST /api/*", "probability": 0.03, "action": "reset"},
    {"match": "POST /api/*", "probability": 0.02, "action": "reset", "before": True},
    {"match": "GET /*", "probability": 0.02, "action": "truncate"},
    {"match": "GET /*", "probability": 0.02, "action": "malformed"},
    {"match": "GET /*", "probability": 0.01, "action": "hang", "delay_ms": 3000},
]
SOUNDPIECE_FAULTS = [
    {"match": "* /*", "probability": 0.03, "action": "status", "status": 503},
    {"match": "* /*", "probability": 0.02, "action": "rate_limit", "retry_after": 1},
    {"match": "* /*", "probability": 0.03, "action": "latency", "delay_ms": 700},
    {"match": "PUT /v1/*", "probability": 0.03, "action": "reset"},
    {"match": "PUT /v1/*", "probability": 0.02, "action": "reset", "before": True},
    {"match": "GET /*", "probability": 0.02, "action": "truncate"},
    {"match": "GET /*", "probability": 0.02, "action": "malformed"},
    {"match": "GET /cdn/*", "probability": 0.03, "action": "reset"},
    {"match": "WEBHOOK *", "probability": 0.1, "action": "webhook_lost"},
    {"match": "WEBHOOK *", "probability": 0.1, "action": "webhook_duplicate"},
    {"match": "WEBHOOK *", "probability": 0.1, "action": "webhook_bad_signature"},
]


def die_with_parent():
    # PR_SET_PDEATHSIG = 1: the child gets SIGKILL when this script goes, however it goes.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def stats(url):
    with urllib.request.urlopen(url + "/_emulator/stats", timeout=10) as r:
        return json.load(r)


class Gateway:
    """The gateway binary, killed and restarted on the same ports and ledger."""

    def __init__(self, binary, config_path, log_dir, env):
        self.binary, self.config_path, self.log_dir, self.env = binary, config_path, log_dir, env
        self.proc = None
        self.incarnation = 0
        self.lock = threading.Lock()
        self.rss_at_age = []  # RSS (kB) of each incarnation at kRssAge seconds

    def start(self):
        with self.lock:
            self.incarnation += 1
            log = open(os.path.join(self.log_dir, f"gateway-{self.incarnation}.log"), "w")
            self.proc = subprocess.Popen(
                [self.binary, f"--config={self.config_path}"], stdout=subprocess.PIPE,
                stderr=log, env=self.env, preexec_fn=die_with_parent)
            line = self.proc.stdout.readline().decode()
            if not line.startswith("musicgw listening"):
                raise RuntimeError(f"gateway did not start: {line!r}, see {log.name}")
            started, proc = time.monotonic(), self.proc

        def sample():
            time.sleep(4)
            if proc.poll() is None:
                self.rss_at_age.append(rss_kb(proc.pid))
        threading.Thread(target=sample, daemon=True).start()
        return started

    def kill9(self):
        with self.lock:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        with self.lock:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(timeout=60)


class Load:
    def __init__(self, target, rng_seed, deadline, pb, client_mod):
        self.target, self.deadline, self.pb, self.cm = target, deadline, pb, client_mod
        self.accepted = {}  # name -> tenant
        self.lock = threading.Lock()
        self.counts = {k: 0 for k in ("generate", "generate_failed", "watch", "watch_done",
                                      "cancel", "download", "download_bytes", "rpc_errors")}
        self.seed = rng_seed

    def count(self, key, n=1):
        with self.lock:
            self.counts[key] += n

    def request(self, rng):
        pb = self.pb
        q = pb.GenerateRequest(request_id=str(uuid.uuid4()))
        kind = rng.randrange(4)
        if kind == 0:
            q.provider = pb.PROVIDER_LOUDLY
            q.parametric_music.genre = "House"
            q.parametric_music.duration_seconds = 30
        elif kind == 1:
            q.provider = pb.PROVIDER_SOUNDPIECE
            q.sound_effect.prompt = "typing"
            q.sound_effect.duration_seconds = 1.5
        elif kind == 2:
            q.provider = pb.PROVIDER_SOUNDPIECE
            q.sample.prompt = "rock, guitar"
            q.sample.duration_seconds = 4
        else:
            q.text_to_music.prompt = "lofi, rain"  # routed by the gateway
        return q

    def worker(self, tenant, index):
        rng = random.Random(f"{self.seed}-{tenant}-{index}")
        client = self.cm.Client(self.target, TENANTS[tenant], tls=False)
        while time.monotonic() < self.deadline:
            q = self.request(rng)
            op = None
            # Retries with the same request_id until accepted: the gateway is down half the time.
            give_up = time.monotonic() + 60
            while op is None and time.monotonic() < give_up:
                try:
                    op = client.stub.Generate(q, metadata=client._metadata, timeout=15)
                except Exception as err:  # grpc.RpcError
                    code = err.code().name if hasattr(err, "code") else "?"
                    if code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED",
                                    "CANCELLED", "UNKNOWN", "INTERNAL"):
                        self.count("generate_failed")
                        break
                    time.sleep(0.2 + rng.random() * 0.5)
            if op is None:
                continue
            self.count("generate")
            with self.lock:
                self.accepted[op.name] = tenant
            roll = rng.random()
            try:
                if roll < 0.2:
                    time.sleep(rng.random() * 2)
                    self.count("cancel")
                    client.stub.CancelOperation(self.pb.CancelOperationRequest(name=op.name),
                                                metadata=client._metadata, timeout=10)
                elif roll < 0.75:
                    self.count("watch")
                    done = None
                    for event in client.watch(op.name, reconnects=50):
                        done = event.operation
                    self.count("watch_done")
                    if done.state == self.pb.OPERATION_STATE_SUCCEEDED and done.outputs and \
                            rng.random() < 0.6:
                        self.count("download")
                        req = self.pb.DownloadRequest(asset=done.outputs[0].name)
                        for chunk in client.stub.Download(req, metadata=client._metadata,
                                                          timeout=60):
                            self.count("download_bytes", len(chunk.data))
            except Exception:  # a kill -9 mid-call: expected, the next round goes on
                self.count("rpc_errors")
        client.close()


def install_sdk(work):
    """The Python SDK installed as a user would (clients/python, offline, into a venv over this
    python's system site, from a copy so nothing is written into the tree); its site-packages."""
    pkg = os.path.join(work, "pkg")
    shutil.copytree(os.path.join(ROOT, "clients", "python"), os.path.join(pkg, "clients", "python"),
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    shutil.copytree(os.path.join(ROOT, "proto"), os.path.join(pkg, "proto"))
    venv = os.path.join(work, "venv")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True)
    subprocess.run([os.path.join(venv, "bin", "pip"), "install", "--quiet", "--no-index",
                    "--no-build-isolation", "--disable-pip-version-check",
                    os.path.join(pkg, "clients", "python")], check=True)
    return glob.glob(os.path.join(venv, "lib", "python3*", "site-packages"))[0]


def rerender_results():
    """RESULTS.md again from the newest benchmark results, now with this run's record."""
    dated = sorted(f for f in os.listdir(os.path.join(ROOT, "bench", "results"))
                   if re.fullmatch(r"\d{8}\.json", f))
    if not dated:
        return
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "results_table.py"), "--merge",
                    os.devnull, os.path.join(ROOT, "bench", "results", dated[-1]), "--markdown",
                    os.path.join(ROOT, "bench", "RESULTS.md")], check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build", "asan"))
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2, help="load threads per tenant")
    ap.add_argument("--record", action="store_true", help="append the figures to bench/RESULTS.md")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="musicgw-soak-")
    sys.path.insert(0, install_sdk(work))
    import musicgw as cm  # noqa: E402
    from musicgw._proto.musicgw.v1 import musicgw_pb2 as pb  # noqa: E402

    binaries = {
        "musicgw": os.path.join(args.build, "services", "gateway", "musicgw"),
        "loudly": os.path.join(args.build, "emulators", "loudly-emulator"),
        "soundpiece": os.path.join(args.build, "emulators", "soundpiece-emulator"),
    }
    for path in binaries.values():
        if not os.access(path, os.X_OK):
            sys.exit(f"missing {path}: build it first (see bench/README.md)")

    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    env.update({"SOAK_LOUDLY_KEY": "loudly_test_key", "SOAK_SOUNDPIECE_KEY": "spk_test_key",
                "SOAK_WEBHOOK_SECRET": webhook_secret})

    emulators = {}
    for name, faults, extra in (
            ("loudly", LOUDLY_FAULTS, ["--sync_latency_ms=300", "--song_delay_ms=1000",
                                       "--default_duration_s=5"]),
            ("soundpiece", SOUNDPIECE_FAULTS, ["--processing_ms=1500", "--long_poll_ms=2000",
                                               f"--webhook_secret={webhook_secret}",
                                               "--credits=100000000",
                                               "--rate_limit_per_second=1000",
                                               "--rate_limit_burst=1000"])):
        plan = os.path.join(work, f"{name}-faults.json")
        with open(plan, "w") as f:
            json.dump({"seed": args.seed, "rules": faults}, f)
        port = free_port()
        log = open(os.path.join(work, f"{name}.log"), "w")
        proc = subprocess.Popen([binaries[name], f"--port={port}", f"--fault_plan={plan}",
                                 f"--seed={args.seed}"] + extra, stdout=subprocess.PIPE,
                                stderr=log, env=env, preexec_fn=die_with_parent)
        line = proc.stdout.readline().decode().strip()
        if not line.startswith("listening on "):
            sys.exit(f"{name} emulator did not start: {line!r}")
        emulators[name] = {"proc": proc, "url": line[len("listening on "):], "log": log.name}
        time.sleep(0.5)
        emulators[name]["rss_start"] = rss_kb(proc.pid)

    grpc_port = free_port()
    config = {
        "server": {"grpc_listen": f"127.0.0.1:{grpc_port}", "metrics_listen": "127.0.0.1:0",
                   "webhook_listen": f"127.0.0.1:{free_port()}", "drain_deadline_seconds": 5},
        "ledger": {"path": os.path.join(work, "ledger.db")},
        "operations": {"deadline_seconds": 120, "watch_heartbeat_seconds": 5},
        "providers": [
            {"name": "loudly-soak", "type": "loudly", "dialect": "b2b",
             "base_url": emulators["loudly"]["url"], "api_key": {"env": "SOAK_LOUDLY_KEY"}},
            {"name": "soundpiece-soak", "type": "soundpiece",
             "base_url": emulators["soundpiece"]["url"], "api_key": {"env": "SOAK_SOUNDPIECE_KEY"},
             "webhook_secrets": {"env": "SOAK_WEBHOOK_SECRET"}},
        ],
        "tenants": [{"name": t, "api_key_sha256": [hashlib.sha256(k.encode()).hexdigest()]}
                    for t, k in TENANTS.items()],
    }
    config_path = os.path.join(work, "musicgw.json")
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2)

    gateway = Gateway(binaries["musicgw"], config_path, work, env)
    gateway.start()
    start = time.monotonic()
    deadline = start + args.minutes * 60
    load = Load(f"127.0.0.1:{grpc_port}", args.seed, deadline, pb, cm)
    threads = [threading.Thread(target=load.worker, args=(t, i), daemon=True)
               for t in TENANTS for i in range(args.workers)]
    for t in threads:
        t.start()

    kills = 0
    rng = random.Random(args.seed)
    while True:
        pause = rng.uniform(5, 20)
        if time.monotonic() + pause >= deadline:
            break
        time.sleep(pause)
        gateway.kill9()
        kills += 1
        gateway.start()
        print(f"[{time.monotonic() - start:6.0f} s] kill -9 #{kills}; accepted so far "
              f"{len(load.accepted)}", flush=True)
    for t in threads:
        t.join(timeout=200)

    # Every accepted operation must still be known, and should reach an end.
    checker = cm.Client(f"127.0.0.1:{grpc_port}", TENANTS["alpha"], tls=False)
    clients = {t: cm.Client(f"127.0.0.1:{grpc_port}", k, tls=False) for t, k in TENANTS.items()}
    lost, not_done, states = [], [], {}
    settle = time.monotonic() + 180
    pending = dict(load.accepted)
    while pending and time.monotonic() < settle:
        for name, tenant in list(pending.items()):
            try:
                op = clients[tenant].get(name)
            except cm.MusicgwError as err:
                if err.code.name == "NOT_FOUND":
                    lost.append(name)
                    pending.pop(name)
                continue
            if op.done:
                states[pb.OperationState.Name(op.state)] = \
                    states.get(pb.OperationState.Name(op.state), 0) + 1
                pending.pop(name)
        if pending:
            time.sleep(2)
    not_done = list(pending)

    # Gateway operations with an attempt on each provider vs the jobs each emulator created.
    attempts = {"PROVIDER_LOUDLY": 0, "PROVIDER_SOUNDPIECE": 0}
    for tenant, client in clients.items():
        token = ""
        while True:
            page = client.stub.ListOperations(pb.ListOperationsRequest(page_size=500,
                                                                       page_token=token),
                                              metadata=client._metadata, timeout=30)
            for op in page.operations:
                for provider in {pb.Provider.Name(a.provider) for a in op.attempts}:
                    attempts[provider] = attempts.get(provider, 0) + 1
            token = page.next_page_token
            if not token:
                break
    loudly_stats = stats(emulators["loudly"]["url"])
    soundpiece_stats = stats(emulators["soundpiece"]["url"])
    loudly_jobs = loudly_stats.get("b2b_songs", 0)
    soundpiece_jobs = soundpiece_stats.get("operations_created", 0)
    duplicates = max(0, loudly_jobs - attempts["PROVIDER_LOUDLY"]) + \
        max(0, soundpiece_jobs - attempts["PROVIDER_SOUNDPIECE"])

    exit_status = gateway.stop()
    for e in emulators.values():
        e["rss_end"] = rss_kb(e["proc"].pid)
        e["proc"].send_signal(signal.SIGTERM)
        e["proc"].wait(timeout=60)
    for c in list(clients.values()) + [checker]:
        c.close()

    reports = 0
    for fname in os.listdir(work):
        if fname.endswith(".log"):
            with open(os.path.join(work, fname), errors="replace") as f:
                reports += sum(1 for line in f if SANITIZER.search(line))
    rss = gateway.rss_at_age
    summary = {
        "build": os.path.relpath(args.build, ROOT),
        "minutes": args.minutes,
        "kills": kills,
        "accepted": len(load.accepted),
        "operations_lost": len(lost),
        "not_done_after_settle": len(not_done),
        "end_states": states,
        "duplicate_paid_generations": duplicates,
        "loudly_songs": loudly_jobs,
        "gateway_loudly_attempts": attempts["PROVIDER_LOUDLY"],
        "soundpiece_created": soundpiece_jobs,
        "soundpiece_idempotent_replays": soundpiece_stats.get("idempotent_replays", 0),
        "gateway_soundpiece_attempts": attempts["PROVIDER_SOUNDPIECE"],
        "faults_injected": loudly_stats.get("faults_injected", 0) +
        soundpiece_stats.get("faults_injected", 0),
        "sanitizer_reports": reports,
        "final_sigterm_exit": exit_status,
        "gateway_rss_mb_at_4s_first_last_max": [round(rss[0] / 1024, 1), round(rss[-1] / 1024, 1),
                                                round(max(rss) / 1024, 1)] if rss else [],
        "emulator_rss_mb_start_end": {n: [round(e["rss_start"] / 1024, 1),
                                          round(e["rss_end"] / 1024, 1)]
                                      for n, e in emulators.items()},
        "load": load.counts,
        "logs": work,
    }
    print(json.dumps(summary, indent=2))
    if args.record:
        with open(os.path.join(ROOT, "bench", "soak", "results.md"), "a") as f:
            f.write(f"\n### Soak run, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
                    f"```\n{json.dumps({k: v for k, v in summary.items() if k != 'logs'}, indent=2)}\n```\n")
        rerender_results()
    ok = not lost and duplicates == 0 and reports == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
