#!/usr/bin/env python3
"""The example clients' keepalive settings must respect the server's enforcement: a client that
pings more often than keepalive_min_ping_interval gets GOAWAY "too_many_pings" after two strikes
and loses every stream on the connection (anchors §4.10). Reads the server's default from
common/config.h, the deployed value from the Kubernetes config, and each client's setting.

  check_keepalive.py SOURCE_DIR
"""
import json
import re
import sys


def main(src):
    def read(path):
        with open(f"{src}/{path}") as f:
            return f.read()

    server_default = int(re.search(r"keepalive_min_ping_interval = absl::Seconds\((\d+)\)",
                                   read("common/config.h")).group(1))
    deployed = json.loads(read("deploy/kubernetes/base/musicgw.json"))["server"].get(
        "keepalive_min_ping_interval_seconds", server_default)
    minimum = max(server_default, deployed)
    clients = {
        "python": int(re.search(r'"grpc\.keepalive_time_ms", ([\d_]+)',
                                read("clients/python/src/musicgw/client.py")).group(1)) / 1000,
        "node": int(re.search(r"pingIntervalMs: (\d+)",
                              read("clients/node/src/client.ts")).group(1)) / 1000,
        "go": int(re.search(r"Time: (\d+) \* time\.Second", read("clients/go/musicgw.go")).group(1)),
    }
    passed = failed = 0
    for name, seconds in clients.items():
        ok = seconds >= minimum
        print(f"{name}: keepalive every {seconds:g} s; server accepts pings every {minimum} s: "
              f"{'ok' if ok else 'TOO OFTEN'}")
        passed, failed = passed + ok, failed + (not ok)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
