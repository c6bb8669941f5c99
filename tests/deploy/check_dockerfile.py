#!/usr/bin/env python3
"""Static checks of the Dockerfile (there is no Docker engine here): stages and base image, the
build stage's dependency install, Release build and unit tests, the runtime stage's user,
ports, volume, health check and copied binaries, and that those binaries are real CMake targets
at the paths the Dockerfile copies from. Runtime package names are checked against Debian's
package lists when apt has them; given the built binaries, so is the claim that those packages
(with their dependencies) provide every shared library the binaries load, the same check the
build stage makes.

  check_dockerfile.py --source-dir . [--gateway-binaries musicgw musicgw-health]
                      [--sandbox-binaries loudly-emulator soundpiece-emulator]
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys

from checker import Checker


def instructions(text):
    """(instruction, arguments) pairs with continuation lines joined and comments dropped."""
    result, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and not current:
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if stripped.endswith("\\"):
            continue
        if current:
            word, _, rest = current.partition(" ")
            result.append((word.upper(), rest.strip()))
        current = ""
    return result


def stages(instrs):
    out, name, global_args = {}, None, {}
    for word, rest in instrs:
        if word == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else f"#{len(out)}"
            out[name] = [("FROM", rest)]
        elif name is None:
            if word == "ARG":
                key, _, value = rest.partition("=")
                global_args[key] = value.strip('"')
        else:
            out[name].append((word, rest))
    return out, global_args


def apt_closure(packages):
    out = subprocess.run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                          "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances",
                          *packages], capture_output=True, text=True, check=True).stdout
    return {line.strip() for line in out.splitlines() if line and line[0] not in " <"}


def owning_packages(paths):
    """{path: package} for files dpkg knows, in one dpkg call per pass (each call reads every
    package's file list); a second pass tries the resolved paths (usrmerge)."""
    owners = {}
    for resolve in (False, True):
        wanted = {os.path.realpath(p) if resolve else p: p for p in paths if p not in owners}
        if not wanted:
            break
        out = subprocess.run(["dpkg", "-S", *wanted], capture_output=True, text=True).stdout
        for line in out.splitlines():
            pkgs, _, path = line.partition(": ")
            if path in wanted:
                owners[wanted[path]] = pkgs.split(",")[0].split(":")[0].strip()
    return owners


def check_libraries(binaries, packages, c):
    """Every shared library a binary loads comes from the packages or their dependencies."""
    allowed = apt_closure(packages)
    needs = {}
    for binary in binaries:
        ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
        libs = re.findall(r"=> (/\S+)", ldd)
        c.check(bool(libs), f"ldd found no libraries in {binary}")
        for lib in libs:
            needs.setdefault(lib, os.path.basename(binary))
    owners = owning_packages(list(needs))
    for lib, binary in sorted(needs.items()):
        pkg = owners.get(lib)
        c.check(pkg in allowed, f"{binary} loads {lib} from {pkg}, which the image lacks")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--source-dir", required=True)
    parser.add_argument("--gateway-binaries", nargs="*", default=[])
    parser.add_argument("--sandbox-binaries", nargs="*", default=[])
    args = parser.parse_args()
    src = args.source_dir
    c = Checker()
    with open(os.path.join(src, "Dockerfile")) as f:
        st, global_args = stages(instructions(f.read()))

    c.check(global_args.get("DEBIAN_IMAGE") == "debian:12-slim", "base image is not debian:12-slim")
    for name in ("build", "runtime", "sandbox"):
        c.check(name in st, f"no stage {name}")
    if c.failures:
        return c.report()
    for name in ("build", "runtime"):
        c.check(st[name][0][1].startswith("${DEBIAN_IMAGE}"), f"stage {name} is not on DEBIAN_IMAGE")
    c.check(st["sandbox"][0][1].startswith("runtime"), "sandbox does not extend runtime")
    default = list(st)[-1]
    c.check(st[default][0][1].strip() == "runtime", "the default (last) target is not the runtime")

    build_runs = " ".join(rest for word, rest in st["build"] if word == "RUN")
    c.check("MUSICGW_CLIENT_DEPS=0 scripts/install-deps.sh" in build_runs,
            "build stage does not install deps with MUSICGW_CLIENT_DEPS=0")
    c.check(os.path.exists(os.path.join(src, "scripts/install-deps.sh")), "scripts/install-deps.sh missing")
    c.check("-DCMAKE_BUILD_TYPE=Release" in build_runs, "build stage does not build Release")
    c.check(re.search(r"ctest [^&]*-L unit", build_runs) is not None, "build stage runs no unit tests")

    # The binaries copied out of the build tree are the CMake targets at those paths.
    defined = {}  # executable target -> directory of the CMakeLists.txt defining it
    for root, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if not d.startswith((".", "build")) and d != "node_modules"]
        if "CMakeLists.txt" in files:
            with open(os.path.join(root, "CMakeLists.txt")) as f:
                for target in re.findall(r"add_executable\(\s*([\w.-]+)", f.read()):
                    defined[target] = os.path.relpath(root, src)
    copied = re.findall(r"/build/([\w/.-]+)", build_runs)
    c.check(len(copied) == 4, f"build stage copies {copied}")
    for path in copied:
        directory, target = os.path.split(path)
        if target.endswith("-emulator") and target not in defined:
            # The emulator binaries are still being written; only the sandbox stage needs them.
            print(f"note: no executable target {target} yet; the sandbox stage cannot build")
            continue
        c.check(defined.get(target) == directory,
                f"no executable target {target} in {directory}/CMakeLists.txt "
                f"(found in {defined.get(target)})")

    runtime = st["runtime"]
    user = [rest for word, rest in runtime if word == "USER"]
    c.check(user and user[-1].split(":")[0] == "65532", "runtime does not run as uid 65532")
    exposed = {p for word, rest in runtime if word == "EXPOSE" for p in rest.split()}
    c.check(exposed == {"50051", "9464", "8080"}, f"runtime exposes {exposed}")
    volumes = [rest for word, rest in runtime if word == "VOLUME"]
    c.check(any("/var/lib/musicgw" in v for v in volumes), "no volume at /var/lib/musicgw")
    health = [rest for word, rest in runtime if word == "HEALTHCHECK"]
    if c.check(len(health) == 1, "runtime has no HEALTHCHECK"):
        cmd = json.loads(health[0][health[0].index("CMD") + 3:].strip())
        c.check(cmd[0] == "/usr/local/bin/musicgw-health" and any(a.startswith("--addr=") for a in cmd),
                f"HEALTHCHECK does not run musicgw-health --addr: {cmd}")
    copies = [rest for word, rest in runtime if word == "COPY"]
    c.check(len(copies) == 1 and "--from=build" in copies[0], "runtime copies more than the binaries")
    if copies:
        c.check(set(shlex.split(copies[0])[1:-1]) == {"/out/bin/musicgw", "/out/bin/musicgw-health"},
                f"runtime copies {copies[0]}")
    entry = [rest for word, rest in runtime if word == "ENTRYPOINT"]
    c.check(entry and json.loads(entry[0]) == ["/usr/local/bin/musicgw"], "ENTRYPOINT is not musicgw")
    sandbox_copies = " ".join(rest for word, rest in st["sandbox"] if word == "COPY")
    c.check("loudly-emulator" in sandbox_copies and "soundpiece-emulator" in sandbox_copies,
            "sandbox lacks the emulators")
    c.check([rest for word, rest in st["sandbox"] if word == "USER"][-1].startswith("65532"),
            "sandbox does not drop back to uid 65532")

    # Ports agree with the Kubernetes config.
    config_path = os.path.join(src, "deploy/kubernetes/base/musicgw.json")
    with open(config_path) as f:
        server = json.load(f)["server"]
    ports = {server[k].rsplit(":", 1)[1] for k in ("grpc_listen", "metrics_listen", "webhook_listen")}
    c.check(ports == exposed, f"EXPOSE {exposed} differs from the config's ports {ports}")

    # Debian 12 runtime package names (needs apt lists; skipped without them).
    packages = (global_args.get("RUNTIME_PACKAGES", "") + " " +
                global_args.get("SANDBOX_PACKAGES", "")).split()
    c.check(bool(packages), "no RUNTIME_PACKAGES")
    probe = subprocess.run(["apt-cache", "show", "libc6"], capture_output=True, text=True)
    if probe.returncode == 0 and probe.stdout:
        shown = subprocess.run(["apt-cache", "show", "--no-all-versions", *packages],
                               capture_output=True, text=True)
        known = set(re.findall(r"^Package: (\S+)$", shown.stdout, re.M))
        for p in packages:
            c.check(p in known, f"no Debian package {p}")
        runtime = global_args.get("RUNTIME_PACKAGES", "").split()
        if args.gateway_binaries:
            check_libraries(args.gateway_binaries, runtime, c)
        if args.sandbox_binaries:
            check_libraries(args.sandbox_binaries, packages, c)
    else:
        print("note: no apt lists here; package names not checked")

    with open(os.path.join(src, ".dockerignore")) as f:
        ignored = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    for must in ("build*/", "**/node_modules/", "sandbox-out/", ".git"):
        c.check(must in ignored, f".dockerignore does not exclude {must}")
    return c.report()


if __name__ == "__main__":
    sys.exit(main())
