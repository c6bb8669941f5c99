#!/usr/bin/env python3
"""Offline checks of the Envoy gRPC-JSON transcoding setup (Envoy itself is not run): the
descriptor set builds, carries every type the transcoder needs, and maps every RPC to HTTP with
path variables and bodies that name real request fields; envoy.yaml parses and names that
service, that descriptor file and an HTTP/2 cluster.

  check_envoy.py --envoy-dir deploy/envoy --work DIR
"""

import argparse
import importlib
import os
import re
import subprocess
import sys

import yaml

from checker import Checker

SERVICE = "musicgw.v1.MusicGateway"
TRANSCODER = ("type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3."
              "GrpcJsonTranscoder")
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")


def build(envoy_dir, work):
    os.makedirs(work, exist_ok=True)
    descriptor = os.path.join(work, "musicgw.pb")
    subprocess.run([os.path.join(envoy_dir, "build_descriptor.sh"), descriptor, sys.executable],
                   check=True, timeout=60)
    # Python classes for our google.api protos, to read the option from the method options.
    subprocess.run(["protoc", f"-I{os.path.join(envoy_dir, 'proto')}", f"--python_out={work}",
                    "google/api/http.proto", "google/api/annotations.proto"],
                   check=True, timeout=60)
    return descriptor


def check_descriptor(descriptor_path, work, c):
    sys.path.insert(0, work)
    annotations = importlib.import_module("google.api.annotations_pb2")
    from google.protobuf import descriptor_pb2

    with open(descriptor_path, "rb") as f:
        fds = descriptor_pb2.FileDescriptorSet.FromString(f.read())
    files = {f.name: f for f in fds.file}
    for needed in ("musicgw/v1/musicgw.proto", "google/api/annotations.proto",
                   "google/api/http.proto", "google/rpc/status.proto",
                   "google/rpc/error_details.proto", "google/protobuf/any.proto",
                   "google/protobuf/duration.proto", "google/protobuf/timestamp.proto",
                   "google/protobuf/descriptor.proto"):
        c.check(needed in files, f"descriptor set lacks {needed} (--include_imports)")
    messages = {}
    for f in fds.file:
        for m in f.message_type:
            messages[f"{f.package}.{m.name}"] = m
    services = {f"{f.package}.{s.name}": s for f in fds.file for s in f.service}
    if not c.check(SERVICE in services, f"descriptor set lacks {SERVICE}"):
        return set()
    mapped = []
    for method in services[SERVICE].method:
        options = method.options
        if not c.check(options.HasExtension(annotations.http),
                       f"{method.name}: no google.api.http option"):
            continue
        rule = options.Extensions[annotations.http]
        pattern = rule.WhichOneof("pattern")
        path = getattr(rule, pattern)
        c.check(path.startswith("/v1/"), f"{method.name}: path {path} outside /v1/")
        request = messages.get(method.input_type.lstrip("."))
        fields = {fd.name for fd in request.field} if request else set()
        for var in re.findall(r"\{(\w+)", path):
            c.check(var in fields, f"{method.name}: path variable {var} is not a request field")
        if rule.body:
            c.check(rule.body == "*" or rule.body in fields,
                    f"{method.name}: body {rule.body} is not a request field")
            c.check(pattern != "get", f"{method.name}: a GET with a body")
        mapped.append(f"{pattern.upper()} {path}" + (" (stream)" if method.server_streaming else ""))
    print(f"descriptor: {len(files)} files; {SERVICE}: {len(mapped)} methods mapped")
    for line in mapped:
        print(f"  {line}")
    return set(services)


def check_envoy_yaml(path, services, c):
    with open(path) as f:
        config = yaml.safe_load(f)
    resources = config.get("static_resources", {})
    clusters = {cl["name"]: cl for cl in resources.get("clusters", [])}
    listeners = resources.get("listeners", [])
    c.check(bool(listeners), "envoy.yaml: no listener")
    transcoders = 0
    for listener in listeners:
        for chain in listener.get("filter_chains", []):
            for flt in chain.get("filters", []):
                hcm = flt.get("typed_config", {})
                if not c.check(hcm.get("@type") == HCM, f"unexpected network filter {flt.get('name')}"):
                    continue
                http_filters = hcm.get("http_filters", [])
                types = [h.get("typed_config", {}).get("@type") for h in http_filters]
                c.check(types and types[-1] == ROUTER, "the router must be the last HTTP filter")
                for h in http_filters:
                    tc = h.get("typed_config", {})
                    if tc.get("@type") != TRANSCODER:
                        continue
                    transcoders += 1
                    c.check(tc.get("services") == [SERVICE],
                            f"transcoder services {tc.get('services')}, expected [{SERVICE}]")
                    for s in tc.get("services", []):
                        c.check(s in services, f"transcoder service {s} not in the descriptor set")
                    c.check(os.path.basename(tc.get("proto_descriptor", "")) == "musicgw.pb",
                            "transcoder proto_descriptor is not the built musicgw.pb")
                    c.check(tc.get("convert_grpc_status") is True,
                            "convert_grpc_status off: errors would lose their details")
                    c.check(tc.get("print_options", {}).get("stream_newline_delimited") is True,
                            "streams would arrive as one array at the end")
                for vh in hcm.get("route_config", {}).get("virtual_hosts", []):
                    for route in vh.get("routes", []):
                        cluster = route.get("route", {}).get("cluster")
                        c.check(cluster in clusters, f"route to unknown cluster {cluster}")
                        c.check(route.get("route", {}).get("timeout") in ("0s", 0),
                                "a route timeout would cut long Watch and Download streams")
    c.check(transcoders == 1, f"{transcoders} gRPC-JSON transcoder filters, expected 1")
    for name, cluster in clusters.items():
        options = cluster.get("typed_extension_protocol_options", {}).get(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions", {})
        h2 = options.get("explicit_http_config", {}).get("http2_protocol_options")
        c.check(h2 is not None, f"cluster {name}: upstream is not HTTP/2 (gRPC needs it)")
        keepalive = (h2 or {}).get("connection_keepalive", {}).get("interval", "0s")
        c.check(int(str(keepalive).rstrip("s")) >= 10,
                f"cluster {name}: keepalive {keepalive} below the server's 10 s minimum")
        ports = [ep["endpoint"]["address"]["socket_address"]["port_value"]
                 for group in cluster["load_assignment"]["endpoints"]
                 for ep in group["lb_endpoints"]]
        c.check(ports == [50051], f"cluster {name}: endpoints {ports}, expected the gRPC port")
        c.check(any("grpc_health_check" in hc for hc in cluster.get("health_checks", [])),
                f"cluster {name}: no grpc.health.v1 health check")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--envoy-dir", required=True)
    parser.add_argument("--work", required=True)
    args = parser.parse_args()
    c = Checker()
    descriptor = build(args.envoy_dir, args.work)
    services = check_descriptor(descriptor, args.work, c)
    check_envoy_yaml(os.path.join(args.envoy_dir, "envoy.yaml"), services, c)
    return c.report()


if __name__ == "__main__":
    sys.exit(main())
