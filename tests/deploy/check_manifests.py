#!/usr/bin/env python3
"""Offline checks of the Kubernetes manifests (no cluster): renders each kustomization with
`kubectl kustomize`, then checks kinds and apiVersions, required fields, and the
cross-references a dry run against a cluster would not catch: selectors match pod labels,
Service and probe ports match container ports and the config's listen addresses, volumes match
mounts, secret files named in the config are mounted, the ledger is on the persistent volume
(SQLite, one replica) or shared (PostgreSQL: several replicas with a PodDisruptionBudget,
topology spread, an autoscaler, surge-only rolling updates, the DSN from a Secret),
the grace period covers preStop plus the drain deadline, the Ingress host is the webhook
callback host, TLS files named in the config come from a mounted Secret (a cert-manager
Certificate's, checked against its schema and the Services it must name), and a TLS port gets
probes and a scrape that speak TLS. With --musicgw, the rendered config also goes through `musicgw --check_config`.

  check_manifests.py --kubectl kubectl --deploy-dir deploy/kubernetes [--musicgw path] [--self-test]
"""

import argparse
import copy
import json
import os
import posixpath
import subprocess
import sys
import tempfile
import urllib.parse

import yaml

from checker import Checker

KNOWN_KINDS = {
    "Namespace": "v1",
    "ServiceAccount": "v1",
    "ConfigMap": "v1",
    "Service": "v1",
    "PersistentVolumeClaim": "v1",
    "StatefulSet": "apps/v1",
    "Deployment": "apps/v1",
    "Ingress": "networking.k8s.io/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PodDisruptionBudget": "policy/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "Certificate": "cert-manager.io/v1",
}
# The example PostgreSQL (deploy/kubernetes/postgres-example), checked on its own.
POSTGRES_KINDS = {"Cluster": "postgresql.cnpg.io/v1"}
CLUSTER_SCOPED = {"Namespace"}
# Field names of the core objects (Kubernetes 1.30 API), to catch typos a client-side dry run
# would: an unknown field is dropped or rejected by the API server.
KNOWN_FIELDS = {
    "pod": {"serviceAccountName", "automountServiceAccountToken", "terminationGracePeriodSeconds",
            "securityContext", "containers", "initContainers", "volumes", "affinity",
            "tolerations", "nodeSelector", "topologySpreadConstraints", "priorityClassName",
            "enableServiceLinks", "imagePullSecrets", "dnsPolicy", "restartPolicy"},
    "container": {"name", "image", "imagePullPolicy", "command", "args", "env", "envFrom",
                  "ports", "resources", "securityContext", "startupProbe", "readinessProbe",
                  "livenessProbe", "lifecycle", "volumeMounts", "workingDir",
                  "terminationMessagePolicy"},
    "probe": {"grpc", "httpGet", "tcpSocket", "exec", "initialDelaySeconds", "periodSeconds",
              "timeoutSeconds", "failureThreshold", "successThreshold",
              "terminationGracePeriodSeconds"},
    "deployment": {"replicas", "selector", "template", "strategy", "minReadySeconds",
                   "revisionHistoryLimit", "progressDeadlineSeconds", "paused"},
    "statefulset": {"replicas", "serviceName", "selector", "template", "volumeClaimTemplates",
                    "podManagementPolicy", "updateStrategy", "minReadySeconds",
                    "persistentVolumeClaimRetentionPolicy", "revisionHistoryLimit", "ordinals"},
    "service": {"type", "selector", "ports", "clusterIP", "clusterIPs", "sessionAffinity",
                "publishNotReadyAddresses", "internalTrafficPolicy", "ipFamilyPolicy"},
    "service_port": {"name", "port", "targetPort", "protocol", "appProtocol", "nodePort"},
    # cert-manager.io/v1 Certificate (cert-manager 1.15 CRD schema).
    "certificate": {"secretName", "issuerRef", "commonName", "dnsNames", "ipAddresses", "uris",
                    "emailAddresses", "otherNames", "subject", "literalSubject", "duration",
                    "renewBefore", "renewBeforePercentage", "privateKey", "usages", "isCA",
                    "keystores", "secretTemplate", "revisionHistoryLimit",
                    "additionalOutputFormats", "encodeUsagesInRequest", "nameConstraints"},
    "certificate_issuer_ref": {"name", "kind", "group"},
    "certificate_private_key": {"algorithm", "size", "encoding", "rotationPolicy"},
}
CERTIFICATE_USAGES = {
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
    "server auth", "client auth", "code signing", "email protection", "s/mime", "ipsec end system",
    "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"}
# The config's TLS blocks: the port each secures.
TLS_BLOCKS = {"tls": "grpc", "metrics_tls": "metrics", "webhook_tls": "webhook"}
TLS_FILE_KEYS = ("cert_file", "key_file", "client_ca_file")


def known_fields(c, what, obj, kind):
    unknown = set(obj or {}) - KNOWN_FIELDS[kind]
    c.check(not unknown, f"{what}: unknown fields {sorted(unknown)}")
CONFIG_FILE = "musicgw.json"
WEBHOOK_PATH = "/webhooks/soundpiece"


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def listen_port(address):
    return int(address.rsplit(":", 1)[1])


def secret_files(node, found):
    """Every {"file": path} secret reference in the config."""
    if isinstance(node, dict):
        if set(node) == {"file"}:
            found.append(node["file"])
        for value in node.values():
            secret_files(value, found)
    elif isinstance(node, list):
        for value in node:
            secret_files(value, found)
    return found


def find(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def check_docs(docs, c):
    """All checks over one rendered kustomization; failures go to c."""
    for d in docs:
        kind = d.get("kind")
        name = (d.get("metadata") or {}).get("name")
        c.check(bool(kind) and bool(name), f"document without kind or metadata.name: {d}")
        c.check(kind in KNOWN_KINDS, f"{kind}/{name}: unexpected kind")
        c.check(
            KNOWN_KINDS.get(kind) == d.get("apiVersion"),
            f"{kind}/{name}: apiVersion {d.get('apiVersion')}, expected {KNOWN_KINDS.get(kind)}",
        )
        c.check(kind != "Secret", f"Secret/{name}: secrets are never committed")

    namespaces = [d["metadata"]["name"] for d in find(docs, "Namespace")]
    if namespaces:
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                c.check(
                    d["metadata"].get("namespace") == namespaces[0],
                    f"{d['kind']}/{d['metadata']['name']}: not in namespace {namespaces[0]}",
                )

    workloads = find(docs, "StatefulSet") + find(docs, "Deployment")
    if not c.check(len(workloads) == 1, f"expected one workload, found {len(workloads)}"):
        return
    wl = workloads[0]
    spec = wl.get("spec", {})
    wl_name = f"{wl['kind']}/{wl['metadata']['name']}"
    template = spec.get("template", {})
    pod_labels = template.get("metadata", {}).get("labels", {})
    selector = spec.get("selector", {}).get("matchLabels", {})
    c.check(labels_match(selector, pod_labels), f"{wl_name}: selector does not match pod labels")
    pod = template.get("spec", {})
    containers = pod.get("containers", [])
    if not c.check(len(containers) >= 1, f"{wl_name}: no containers"):
        return
    ct = containers[0]
    c.check(bool(ct.get("image")), f"{wl_name}: container without image")
    known_fields(c, wl_name, spec, wl["kind"].lower())
    known_fields(c, f"{wl_name} pod", pod, "pod")
    for container in containers:
        known_fields(c, f"{wl_name} container {container.get('name')}", container, "container")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in container:
                known_fields(c, f"{wl_name} {probe}", container[probe], "probe")

    psc = pod.get("securityContext", {})
    c.check(psc.get("runAsNonRoot") is True, f"{wl_name}: runAsNonRoot must be true")
    c.check(psc.get("runAsUser", 0) != 0, f"{wl_name}: runAsUser must not be 0")
    csc = ct.get("securityContext", {})
    c.check(csc.get("readOnlyRootFilesystem") is True, f"{wl_name}: root filesystem not read-only")
    c.check(csc.get("allowPrivilegeEscalation") is False, f"{wl_name}: privilege escalation allowed")
    c.check("ALL" in csc.get("capabilities", {}).get("drop", []), f"{wl_name}: capabilities not dropped")
    res = ct.get("resources", {})
    for part in ("requests", "limits"):
        for r in ("cpu", "memory"):
            c.check(r in res.get(part, {}), f"{wl_name}: no resources.{part}.{r}")

    ports = {p.get("name"): p.get("containerPort") for p in ct.get("ports", [])}
    for port_name in ("grpc", "metrics", "webhook"):
        c.check(port_name in ports, f"{wl_name}: no container port named {port_name}")

    # Volumes and mounts.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = {t["metadata"]["name"]: t for t in spec.get("volumeClaimTemplates", [])}
    mounts = {m["name"]: m for m in ct.get("volumeMounts", [])}
    for m in mounts:
        c.check(m in volumes or m in claims, f"{wl_name}: volumeMount {m} has no volume")
    for v in list(volumes) + list(claims):
        c.check(v in mounts, f"{wl_name}: volume {v} is never mounted")
    for v in volumes.values():
        if "persistentVolumeClaim" in v and wl["kind"] == "Deployment":
            claim = v["persistentVolumeClaim"]["claimName"]
            pvcs = [d for d in find(docs, "PersistentVolumeClaim") if d["metadata"]["name"] == claim]
            c.check(bool(pvcs), f"{wl_name}: PersistentVolumeClaim {claim} not found")

    # The config: mounted from the ConfigMap, passed with --config, and consistent.
    config_maps = {d["metadata"]["name"]: d for d in find(docs, "ConfigMap")}
    config = None
    args = ct.get("args", []) + ct.get("command", [])
    config_args = [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    if c.check(len(config_args) == 1, f"{wl_name}: no --config= argument"):
        config_path = config_args[0]
        for m in mounts.values():
            if posixpath.dirname(config_path) != m["mountPath"].rstrip("/"):
                continue
            volume = volumes.get(m["name"], {})
            cm_name = volume.get("configMap", {}).get("name")
            if c.check(cm_name in config_maps, f"{wl_name}: ConfigMap {cm_name} not found"):
                text = config_maps[cm_name].get("data", {}).get(posixpath.basename(config_path))
                if c.check(text is not None, f"ConfigMap {cm_name} has no {config_path}"):
                    config = json.loads(text)
        c.check(config is not None, f"{wl_name}: {config_path} is not mounted from a ConfigMap")
    if config is None:
        return config

    server = config.get("server", {})
    for key, port_name in (("grpc_listen", "grpc"), ("metrics_listen", "metrics"),
                           ("webhook_listen", "webhook")):
        if c.check(key in server, f"config: server.{key} not set"):
            c.check(
                listen_port(server[key]) == ports.get(port_name),
                f"config server.{key} {server[key]} is not container port {port_name}",
            )
            c.check(
                not server[key].startswith("127.") and not server[key].startswith("localhost"),
                f"config server.{key} listens on loopback only",
            )

    drain = server.get("drain_deadline_seconds", 20)
    pre_stop = ct.get("lifecycle", {}).get("preStop")
    pre_stop_seconds = 0
    if c.check(pre_stop is not None, f"{wl_name}: no preStop hook"):
        command = pre_stop.get("exec", {}).get("command", [])
        if command and command[0].endswith("sleep"):
            pre_stop_seconds = float(command[1])
        elif "sleep" in pre_stop:
            pre_stop_seconds = float(pre_stop["sleep"]["seconds"])
    grace = pod.get("terminationGracePeriodSeconds", 30)
    c.check(
        grace > drain + pre_stop_seconds,
        f"{wl_name}: terminationGracePeriodSeconds {grace} <= preStop {pre_stop_seconds} s "
        f"+ drain_deadline_seconds {drain}",
    )

    postgres = config.get("ledger", {}).get("postgres")
    if postgres is None:
        check_single_replica(c, wl, wl_name)
        ledger_dir = posixpath.dirname(config.get("ledger", {}).get("path", ""))
        ledger_mount = [m for m in mounts.values() if m["mountPath"].rstrip("/") == ledger_dir]
        c.check(
            ledger_mount
            and (ledger_mount[0]["name"] in claims
                 or "persistentVolumeClaim" in volumes.get(ledger_mount[0]["name"], {})),
            f"config ledger.path {config.get('ledger', {}).get('path')} is not on a persistent volume",
        )
        for provider in config.get("providers", []):
            state = provider.get("token_state_file")
            if state:
                c.check(posixpath.dirname(state) == ledger_dir,
                        f"config token_state_file {state} is not on the ledger volume")
    else:
        check_replicated(c, docs, wl, wl_name, pod_labels, postgres)
        # Custody is the one volume, and every replica must see the same one: a relative or
        # default assets_path would land on the read-only root, a ReadWriteOnce claim would
        # pin every replica to one node.
        assets_path = config.get("ledger", {}).get("assets_path", "")
        assets_mount = [m for m in mounts.values() if m["mountPath"].rstrip("/") == assets_path]
        if c.check(assets_path.startswith("/") and bool(assets_mount),
                   f"config ledger.assets_path {assets_path!r} is not a mounted volume"):
            claim = volumes.get(assets_mount[0]["name"], {}).get("persistentVolumeClaim", {})
            pvcs = [d for d in find(docs, "PersistentVolumeClaim")
                    if d["metadata"]["name"] == claim.get("claimName")]
            c.check(bool(pvcs) and "ReadWriteMany" in pvcs[0]["spec"].get("accessModes", []),
                    f"config ledger.assets_path {assets_path} is not on a ReadWriteMany claim")
        shared = {m["name"] for m in assets_mount}
        c.check(not claims and not any("persistentVolumeClaim" in v for name, v in volumes.items()
                                       if name not in shared),
                f"{wl_name}: replicas on the shared ledger keep no volume of their own")

    # Every secret file the config names is a key of a mounted Secret.
    mounted_files = {}  # path -> the Secret it comes from
    for m in mounts.values():
        volume = volumes.get(m["name"], {})
        sources = volume.get("projected", {}).get("sources", [])
        if "secret" in volume:
            sources = [{"secret": {"name": volume["secret"].get("secretName"),
                                   "items": volume["secret"].get("items", [])}}]
        for source in sources:
            for item in source.get("secret", {}).get("items", []):
                mounted_files[posixpath.join(m["mountPath"], item["path"])] = source["secret"]["name"]
    files = secret_files(config.get("providers", []), [])
    ledger_files = secret_files(config.get("ledger", {}), [])
    for f in ledger_files:
        c.check(f in mounted_files, f"config ledger secret file {f} is not mounted from a Secret")
    c.check(bool(files), "config: no provider secret is read from a file")
    for f in files:
        c.check(f in mounted_files, f"config secret file {f} is not mounted from a Secret")

    # Services.
    services = {d["metadata"]["name"]: d for d in find(docs, "Service")}
    certificates = check_certificates(c, docs, services, mounted_files)
    check_tls(c, wl_name, ct, ports, server, mounted_files, certificates)
    for name, svc in services.items():
        s = svc.get("spec", {})
        known_fields(c, f"Service/{name}", s, "service")
        for p in s.get("ports", []):
            known_fields(c, f"Service/{name} port", p, "service_port")
        c.check(labels_match(s.get("selector", {}), pod_labels),
                f"Service/{name}: selector does not match the pod labels")
        for p in s.get("ports", []):
            target = p.get("targetPort", p.get("port"))
            c.check(target in ports or target in ports.values(),
                    f"Service/{name}: targetPort {target} is not a container port")
    if wl["kind"] == "StatefulSet":
        headless = services.get(spec.get("serviceName"))
        c.check(headless is not None and headless["spec"].get("clusterIP") == "None",
                f"{wl_name}: serviceName {spec.get('serviceName')} is not a headless Service")
    c.check(any(p.get("name") == "grpc" for s in services.values()
                for p in s["spec"].get("ports", []) if s["spec"].get("clusterIP") != "None"),
            "no ClusterIP Service for gRPC")

    # ServiceMonitor -> metrics Service.
    for sm in find(docs, "ServiceMonitor"):
        sel = sm["spec"].get("selector", {}).get("matchLabels", {})
        targets = [s for s in services.values() if labels_match(sel, s["metadata"].get("labels", {}))]
        if c.check(len(targets) == 1, f"ServiceMonitor/{sm['metadata']['name']}: selects "
                                      f"{len(targets)} Services, expected 1"):
            names = {p.get("name") for p in targets[0]["spec"]["ports"]}
            for ep in sm["spec"].get("endpoints", []):
                c.check(ep.get("port") in names,
                        f"ServiceMonitor endpoint port {ep.get('port')} not on the Service")
                check_scrape_tls(c, ep, server.get("metrics_tls"), mounted_files, certificates)
                c.check(targets[0]["spec"]["ports"][0].get("targetPort") in ("metrics", ports["metrics"]),
                        "ServiceMonitor does not reach the metrics port")

    # Ingress -> webhook Service, host = the provider's callback host.
    callback_hosts = {urllib.parse.urlparse(p["callback_url"]).hostname
                      for p in config.get("providers", []) if p.get("callback_url")}
    ingresses = find(docs, "Ingress")
    c.check(bool(ingresses), "no Ingress for the webhook endpoint")
    for ing in ingresses:
        routed = False
        for rule in ing["spec"].get("rules", []):
            c.check(rule.get("host") in callback_hosts,
                    f"Ingress host {rule.get('host')} is not a callback_url host {callback_hosts}")
            for p in rule.get("http", {}).get("paths", []):
                backend = p["backend"]["service"]
                svc = services.get(backend["name"])
                if not c.check(svc is not None, f"Ingress backend {backend['name']} not found"):
                    continue
                port = backend["port"].get("name", backend["port"].get("number"))
                svc_ports = [sp for sp in svc["spec"]["ports"] if port in (sp.get("name"), sp.get("port"))]
                if c.check(bool(svc_ports), f"Ingress backend port {port} not on {backend['name']}"):
                    c.check(svc_ports[0].get("targetPort") in ("webhook", ports["webhook"]),
                            "Ingress does not reach the webhook port")
                routed |= p.get("path") == WEBHOOK_PATH
        c.check(routed, f"Ingress does not route {WEBHOOK_PATH}")
        for tls in ing["spec"].get("tls", []):
            for host in tls.get("hosts", []):
                c.check(host in callback_hosts, f"Ingress TLS host {host} is not a callback host")

    # NetworkPolicy.
    policies = find(docs, "NetworkPolicy")
    c.check(bool(policies), "no NetworkPolicy")
    for np in policies:
        s = np["spec"]
        c.check(labels_match(s.get("podSelector", {}).get("matchLabels", {}), pod_labels),
                "NetworkPolicy podSelector does not match the pod")
        c.check(set(s.get("policyTypes", [])) == {"Ingress", "Egress"},
                "NetworkPolicy must restrict both ingress and egress")
        allowed_in = set()
        for rule in s.get("ingress", []):
            c.check(bool(rule.get("from")), "NetworkPolicy ingress rule open to every source")
            for p in rule.get("ports", []):
                c.check(p["port"] in ports or p["port"] in ports.values(),
                        f"NetworkPolicy port {p['port']} is not a container port")
                allowed_in.add(ports.get(p["port"], p["port"]))
        c.check(allowed_in == set(ports[n] for n in ("grpc", "metrics", "webhook")),
                f"NetworkPolicy ingress allows ports {allowed_in}")
        egress_ports = {(p.get("port"), p.get("protocol", "TCP"))
                        for rule in s.get("egress", []) for p in rule.get("ports", [])}
        c.check((53, "UDP") in egress_ports, "NetworkPolicy egress: no DNS")
        c.check((443, "TCP") in egress_ports, "NetworkPolicy egress: no HTTPS to providers")
        if config.get("ledger", {}).get("postgres") is not None:
            c.check((5432, "TCP") in egress_ports, "NetworkPolicy egress: no PostgreSQL")
    return config


def check_certificates(c, docs, services, mounted_files):
    """cert-manager Certificates: the CRD's fields, an issuer, a Secret the pod mounts (never a
    Secret in the repository), and names that are this namespace's Services. Returns
    {secretName: Certificate spec}."""
    by_secret = {}
    mounted_secrets = set(mounted_files.values())
    for cert in find(docs, "Certificate"):
        name = f"Certificate/{cert['metadata']['name']}"
        namespace = cert["metadata"].get("namespace")
        spec = cert.get("spec", {})
        known_fields(c, name, spec, "certificate")
        ref = spec.get("issuerRef", {})
        known_fields(c, f"{name} issuerRef", ref, "certificate_issuer_ref")
        c.check(bool(ref.get("name")), f"{name}: issuerRef.name not set")
        c.check(ref.get("kind") in ("Issuer", "ClusterIssuer"),
                f"{name}: issuerRef.kind {ref.get('kind')} is not Issuer or ClusterIssuer")
        c.check(ref.get("group", "cert-manager.io") == "cert-manager.io",
                f"{name}: issuerRef.group {ref.get('group')} is not cert-manager.io")
        known_fields(c, f"{name} privateKey", spec.get("privateKey", {}), "certificate_private_key")
        unknown_usages = set(spec.get("usages", [])) - CERTIFICATE_USAGES
        c.check(not unknown_usages, f"{name}: unknown usages {sorted(unknown_usages)}")
        c.check("server auth" in spec.get("usages", ["server auth"]),
                f"{name}: usages lack server auth")
        secret = spec.get("secretName")
        if c.check(bool(secret), f"{name}: no secretName"):
            by_secret[secret] = spec
            c.check(secret in mounted_secrets, f"{name}: Secret {secret} is not mounted")
            files = {posixpath.basename(f) for f, s in mounted_files.items() if s == secret}
            c.check({"tls.crt", "tls.key"} <= files,
                    f"{name}: Secret {secret} is mounted without tls.crt and tls.key")
        dns_names = spec.get("dnsNames", [])
        c.check(bool(dns_names), f"{name}: no dnsNames")
        in_cluster = [n for n in dns_names if ".svc" in n]
        for n in in_cluster:
            parts = n.split(".")
            c.check(parts[0] in services and len(parts) >= 3 and parts[1] == namespace
                    and n.endswith((".svc", ".svc.cluster.local")),
                    f"{name}: dnsName {n} is not a Service of namespace {namespace}")
        c.check(bool(in_cluster), f"{name}: names no Service of namespace {namespace}")
    return by_secret


def tls_secret(server_tls, mounted_files):
    """The Secret a TLS block's certificate is mounted from, or None."""
    return mounted_files.get((server_tls or {}).get("cert_file"))


def check_tls(c, wl_name, ct, ports, server, mounted_files, certificates):
    """TLS files come from mounted Secrets; probes of a TLS gRPC port speak TLS."""
    for block in TLS_BLOCKS:
        tls = server.get(block)
        if tls is None:
            continue
        for key in TLS_FILE_KEYS:
            if tls.get(key):
                c.check(tls[key] in mounted_files,
                        f"config server.{block}.{key} {tls[key]} is not mounted from a Secret")
    grpc_tls = server.get("tls")
    cert = certificates.get(tls_secret(grpc_tls, mounted_files))
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = ct.get(probe_name)
        if probe is None:
            c.check(probe_name == "startupProbe", f"{wl_name}: no {probe_name}")
            continue
        if grpc_tls is None:
            if c.check("grpc" in probe, f"{wl_name}: {probe_name} must be a gRPC probe"):
                c.check(probe["grpc"].get("port") == ports.get("grpc"),
                        f"{wl_name}: {probe_name} port {probe['grpc'].get('port')} is not the "
                        "grpc port")
            continue
        # The kubelet's gRPC probe has no TLS: the image's musicgw-health does it.
        command = probe.get("exec", {}).get("command", [])
        if not c.check("grpc" not in probe and command and command[0].endswith("/musicgw-health"),
                       f"{wl_name}: {probe_name} of a TLS gRPC port must exec musicgw-health"):
            continue
        flags = dict(a[2:].split("=", 1) for a in command[1:] if a.startswith("--") and "=" in a)
        c.check(listen_port(flags.get("addr", ":0")) == ports.get("grpc"),
                f"{wl_name}: {probe_name} --addr {flags.get('addr')} is not the grpc port")
        c.check(flags.get("tls_ca_file") in mounted_files,
                f"{wl_name}: {probe_name} --tls_ca_file {flags.get('tls_ca_file')} is not mounted "
                "from a Secret")
        if grpc_tls.get("client_ca_file"):
            c.check(flags.get("tls_cert_file") in mounted_files,
                    f"{wl_name}: {probe_name} needs a client certificate (mTLS)")
        if cert is not None:
            c.check(flags.get("tls_server_name") in cert.get("dnsNames", []),
                    f"{wl_name}: {probe_name} --tls_server_name {flags.get('tls_server_name')} "
                    "is not a dnsName of the gRPC certificate")
        c.check(probe.get("timeoutSeconds", 1) * 1000 > int(flags.get("timeout_ms", 2000)),
                f"{wl_name}: {probe_name} timeoutSeconds is below musicgw-health --timeout_ms")


def check_scrape_tls(c, endpoint, metrics_tls, mounted_files, certificates):
    """A ServiceMonitor endpoint scrapes a TLS metrics port with https and a CA."""
    scheme = endpoint.get("scheme", "http")
    if metrics_tls is None:
        c.check(scheme == "http", f"ServiceMonitor scheme {scheme} on a plaintext metrics port")
        return
    c.check(scheme == "https", f"ServiceMonitor scheme {scheme} on a TLS metrics port")
    tls_config = endpoint.get("tlsConfig", {})
    ca = tls_config.get("ca", {})
    c.check(bool(ca.get("secret") or ca.get("configMap")) or "caFile" in tls_config,
            "ServiceMonitor tlsConfig has no CA for the TLS metrics port")
    c.check(not tls_config.get("insecureSkipVerify", False),
            "ServiceMonitor skips verifying the metrics port's certificate")
    cert = certificates.get(tls_secret(metrics_tls, mounted_files))
    if cert is not None:
        c.check(tls_config.get("serverName") in cert.get("dnsNames", []),
                f"ServiceMonitor tlsConfig.serverName {tls_config.get('serverName')} is not a "
                "dnsName of the metrics certificate")
    if metrics_tls.get("client_ca_file"):
        c.check(bool(tls_config.get("cert")) and bool(tls_config.get("keySecret")),
                "ServiceMonitor presents no client certificate to the mTLS metrics port")


def check_single_replica(c, wl, wl_name):
    """The ledger is embedded SQLite: one writer per volume."""
    spec = wl.get("spec", {})
    c.check(spec.get("replicas") == 1, f"{wl_name}: replicas must be 1 (one pod per ledger)")
    if wl["kind"] == "Deployment":
        c.check(
            spec.get("strategy", {}).get("type") == "Recreate",
            f"{wl_name}: a Deployment over the ledger needs strategy Recreate",
        )


def check_replicated(c, docs, wl, wl_name, pod_labels, postgres):
    """Several replicas on the shared PostgreSQL ledger (the HA overlay)."""
    spec = wl.get("spec", {})
    replicas = spec.get("replicas", 1)
    c.check(wl["kind"] == "Deployment", f"{wl_name}: replicas on the shared ledger are a Deployment")
    c.check(replicas >= 3, f"{wl_name}: replicas {replicas}, at least 3 for HA")
    c.check(isinstance(postgres.get("dsn"), dict) and set(postgres["dsn"]) == {"file"},
            "config ledger.postgres.dsn must be a secret file reference, never inline")
    strategy = spec.get("strategy", {})
    c.check(strategy.get("type") == "RollingUpdate"
            and strategy.get("rollingUpdate", {}).get("maxUnavailable") == 0
            and strategy.get("rollingUpdate", {}).get("maxSurge", 0) not in (0, "0%"),
            f"{wl_name}: rolling updates need maxUnavailable 0 and a surge")
    spread = wl["spec"]["template"]["spec"].get("topologySpreadConstraints", [])
    c.check(bool(spread), f"{wl_name}: no topologySpreadConstraints")
    for t in spread:
        c.check(labels_match(t.get("labelSelector", {}).get("matchLabels", {}), pod_labels),
                f"{wl_name}: topology spread on {t.get('topologyKey')} does not select the pods")
    pdbs = find(docs, "PodDisruptionBudget")
    if c.check(len(pdbs) == 1, f"expected one PodDisruptionBudget, found {len(pdbs)}"):
        pdb = pdbs[0]["spec"]
        c.check(labels_match(pdb.get("selector", {}).get("matchLabels", {}), pod_labels),
                "PodDisruptionBudget does not select the gateway pods")
        allowed = pdb.get("maxUnavailable", replicas - pdb.get("minAvailable", replicas))
        c.check(isinstance(allowed, int) and 1 <= allowed < replicas,
                f"PodDisruptionBudget allows {allowed} of {replicas} pods down")
    hpas = find(docs, "HorizontalPodAutoscaler")
    if c.check(len(hpas) == 1, f"expected one HorizontalPodAutoscaler, found {len(hpas)}"):
        hpa = hpas[0]["spec"]
        ref = hpa.get("scaleTargetRef", {})
        c.check(ref.get("kind") == wl["kind"] and ref.get("name") == wl["metadata"]["name"]
                and ref.get("apiVersion") == "apps/v1",
                f"HorizontalPodAutoscaler targets {ref}, not {wl_name}")
        c.check(hpa.get("minReplicas", 1) >= replicas,
                f"HorizontalPodAutoscaler minReplicas {hpa.get('minReplicas')} below {replicas}")
        c.check(hpa.get("maxReplicas", 0) >= hpa.get("minReplicas", 1),
                "HorizontalPodAutoscaler maxReplicas below minReplicas")
        c.check(bool(hpa.get("metrics")), "HorizontalPodAutoscaler without metrics")


def check_postgres_example(docs, c):
    """The example PostgreSQL: a CloudNativePG Cluster the HA overlay's NetworkPolicy reaches."""
    for d in docs:
        kind = d.get("kind")
        c.check(POSTGRES_KINDS.get(kind) == d.get("apiVersion"),
                f"{kind}: unexpected kind or apiVersion {d.get('apiVersion')}")
    clusters = find(docs, "Cluster")
    if not c.check(len(clusters) == 1, f"expected one Cluster, found {len(clusters)}"):
        return
    spec = clusters[0].get("spec", {})
    c.check(spec.get("instances", 1) >= 2, "Cluster: a single instance has no failover")
    c.check(bool(spec.get("storage", {}).get("size")), "Cluster: no storage.size")
    c.check(spec.get("bootstrap", {}).get("initdb", {}).get("database") == "musicgw",
            "Cluster: bootstrap.initdb.database is not musicgw")
    for r in ("cpu", "memory"):
        c.check(r in spec.get("resources", {}).get("requests", {}), f"Cluster: no requests.{r}")
    c.check(clusters[0]["metadata"]["name"] == "musicgw-ledger",
            "Cluster: the HA overlay's NetworkPolicy expects the name musicgw-ledger")


def check_config_with_binary(musicgw, config, c):
    """Runs the gateway's own parser on the config, secrets replaced by placeholder files."""
    config = copy.deepcopy(config)
    with tempfile.TemporaryDirectory() as tmp:
        def replace(node):
            if isinstance(node, dict):
                if set(node) == {"file"}:
                    path = os.path.join(tmp, str(len(os.listdir(tmp))))
                    with open(path, "w") as f:
                        f.write("whsec_placeholder" if "webhook" in node["file"] else "placeholder")
                    node["file"] = path
                for v in node.values():
                    replace(v)
            elif isinstance(node, list):
                for v in node:
                    replace(v)
        replace(config)
        # TLS files (mounted from a Secret in the cluster) only need to be readable here.
        for block in TLS_BLOCKS:
            for key in TLS_FILE_KEYS:
                tls = config.get("server", {}).get(block, {})
                if tls.get(key):
                    tls[key] = os.path.join(tmp, f"{block}-{key}")
                    with open(tls[key], "w") as f:
                        f.write("placeholder")
        path = os.path.join(tmp, CONFIG_FILE)
        with open(path, "w") as f:
            json.dump(config, f)
        result = subprocess.run([musicgw, "--check_config", f"--config={path}"],
                                capture_output=True, text=True, timeout=30)
        c.check(result.returncode == 0,
                f"musicgw --check_config rejects the config: {result.stderr.strip()}")


def render(kubectl, directory):
    out = subprocess.run([kubectl, "kustomize", directory], capture_output=True, text=True,
                         timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory}: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def self_test_ha(docs):
    """The HA overlay's checks must catch what they claim to."""
    def deployment(ds):
        return [d for d in ds if d["kind"] == "Deployment"][0]

    def config_map(ds):
        return [d for d in ds if d["kind"] == "ConfigMap"][0]

    def inline_dsn(ds):
        cm = config_map(ds)
        key = next(iter(cm["data"]))
        config = json.loads(cm["data"][key])
        config["ledger"]["postgres"]["dsn"] = "postgresql://gw:secret@db/musicgw"
        cm["data"][key] = json.dumps(config)

    def unset_assets_path(ds):
        cm = config_map(ds)
        key = next(iter(cm["data"]))
        config = json.loads(cm["data"][key])
        config["ledger"].pop("assets_path")
        cm["data"][key] = json.dumps(config)

    mutations = {
        "rolling update may take a pod down": lambda ds: deployment(ds)["spec"]["strategy"]
        ["rollingUpdate"].update(maxUnavailable=1),
        "one replica": lambda ds: deployment(ds)["spec"].update(replicas=1),
        "no topology spread": lambda ds: deployment(ds)["spec"]["template"]["spec"]
        .pop("topologySpreadConstraints"),
        "PDB selector typo": lambda ds: [d for d in ds if d["kind"] == "PodDisruptionBudget"][0]
        ["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "typo"}),
        "HPA below the replicas": lambda ds: [d for d in ds if d["kind"] == "HorizontalPodAutoscaler"]
        [0]["spec"].update(minReplicas=1),
        "DSN inline in the config": inline_dsn,
        "no egress to PostgreSQL": lambda ds: [d for d in ds if d["kind"] == "NetworkPolicy"][0]
        ["spec"]["egress"].pop(),
        "custody on a ReadWriteOnce claim": lambda ds: [
            d for d in ds if d["kind"] == "PersistentVolumeClaim"][0]["spec"].update(
                accessModes=["ReadWriteOnce"]),
        "custody on the read-only root": lambda ds: unset_assets_path(ds),
    }
    failures = []
    for name, mutate in mutations.items():
        mutated = copy.deepcopy(docs)
        mutate(mutated)
        c = Checker(name)
        check_docs(mutated, c)
        if not c.failures:
            failures.append(f"self-test (ha): '{name}' was not detected")
    return len(mutations) - len(failures), failures


def self_test_production(docs):
    """The TLS checks of the production overlay must catch what they claim to."""
    def one(ds, kind):
        return [d for d in ds if d["kind"] == kind][0]

    def pod(ds):
        return one(ds, "StatefulSet")["spec"]["template"]["spec"]

    def unmount_tls(ds):
        pod(ds)["volumes"] = [v for v in pod(ds)["volumes"] if v["name"] != "grpc-tls"]
        ct = pod(ds)["containers"][0]
        ct["volumeMounts"] = [m for m in ct["volumeMounts"] if m["name"] != "grpc-tls"]

    def probe_flag(ds, flag, value):
        command = pod(ds)["containers"][0]["readinessProbe"]["exec"]["command"]
        command[:] = [a for a in command if not a.startswith(f"--{flag}=")] + [f"--{flag}={value}"]

    mutations = {
        "Certificate field typo": lambda ds: one(ds, "Certificate")["spec"].update(
            dnsName=["musicgw"]),
        "Certificate issuer without kind": lambda ds: one(ds, "Certificate")["spec"]["issuerRef"]
        .pop("kind"),
        "Certificate for a Service that does not exist": lambda ds: one(ds, "Certificate")
        ["spec"].update(dnsNames=["musicgw-typo.musicgw.svc"]),
        "Certificate usage typo": lambda ds: one(ds, "Certificate")["spec"].update(
            usages=["server-auth"]),
        "TLS Secret not mounted": unmount_tls,
        "kubelet gRPC probe on the TLS port": lambda ds: pod(ds)["containers"][0].update(
            readinessProbe={"grpc": {"port": 50051}}),
        "probe trusts an unmounted CA": lambda ds: probe_flag(ds, "tls_ca_file", "/etc/ca.crt"),
        "probe verifies a name the certificate lacks": lambda ds: probe_flag(
            ds, "tls_server_name", "localhost"),
        "plaintext scrape of the TLS metrics port": lambda ds: one(ds, "ServiceMonitor")["spec"]
        ["endpoints"][0].update(scheme="http"),
        "scrape without a CA": lambda ds: one(ds, "ServiceMonitor")["spec"]["endpoints"][0]
        .pop("tlsConfig"),
    }
    failures = []
    for name, mutate in mutations.items():
        mutated = copy.deepcopy(docs)
        mutate(mutated)
        c = Checker(name)
        check_docs(mutated, c)
        if not c.failures:
            failures.append(f"self-test (production): '{name}' was not detected")
    return len(mutations) - len(failures), failures


def self_test(docs):
    """The checks must catch what they claim to: each mutation has to fail."""
    def workload(ds):
        return [d for d in ds if d["kind"] in ("StatefulSet", "Deployment")][0]

    def pod(ds):
        return workload(ds)["spec"]["template"]["spec"]

    mutations = {
        "grace period below drain": lambda ds: pod(ds).update(terminationGracePeriodSeconds=10),
        "probe on the metrics port": lambda ds: pod(ds)["containers"][0]["readinessProbe"]["grpc"]
        .update(port=9464),
        "two replicas": lambda ds: workload(ds)["spec"].update(replicas=2),
        "mount without volume": lambda ds: pod(ds)["containers"][0]["volumeMounts"][0]
        .update(name="nope"),
        "service selector typo": lambda ds: [d for d in ds if d["kind"] == "Service"][0]["spec"]
        ["selector"].update({"app.kubernetes.io/name": "musicgw-typo"}),
        "probe field typo": lambda ds: pod(ds)["containers"][0].update(
            readinesProbe=pod(ds)["containers"][0]["readinessProbe"]),
        "writable root": lambda ds: pod(ds)["containers"][0]["securityContext"]
        .update(readOnlyRootFilesystem=False),
        "a Secret with data": lambda ds: ds.append(
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}, "data": {}}),
    }
    failures = []
    for name, mutate in mutations.items():
        mutated = copy.deepcopy(docs)
        mutate(mutated)
        c = Checker(name)
        check_docs(mutated, c)
        if not c.failures:
            failures.append(f"self-test: '{name}' was not detected")
    return len(mutations) - len(failures), failures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubectl", default="kubectl")
    parser.add_argument("--deploy-dir", required=True)
    parser.add_argument("--musicgw", help="gateway binary, for --check_config")
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()

    passed, failed = 0, 0
    for overlay in ("base", "overlays/production", "overlays/ha"):
        c = Checker(overlay)
        docs = render(args.kubectl, os.path.join(args.deploy_dir, overlay))
        config = check_docs(docs, c)
        if config is not None and args.musicgw:
            check_config_with_binary(args.musicgw, config, c)
        kinds = sorted({d["kind"] for d in docs})
        print(f"{overlay}: {len(docs)} objects ({', '.join(kinds)}): "
              f"{c.passed} checks passed, {len(c.failures)} failed")
        for f in c.failures:
            print(f"  FAIL {f}")
        passed += c.passed
        failed += len(c.failures)
        if args.self_test:
            ok, problems = {"base": self_test, "overlays/production": self_test_production,
                            "overlays/ha": self_test_ha}[overlay](docs)
            print(f"self-test: {ok} mutations detected, {len(problems)} missed")
            for p in problems:
                print(f"  FAIL {p}")
            passed += ok
            failed += len(problems)
    c = Checker("postgres-example")
    docs = render(args.kubectl, os.path.join(args.deploy_dir, "postgres-example"))
    check_postgres_example(docs, c)
    print(f"postgres-example: {len(docs)} objects: {c.passed} checks passed, "
          f"{len(c.failures)} failed")
    for f in c.failures:
        print(f"  FAIL {f}")
    passed += c.passed
    failed += len(c.failures)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
