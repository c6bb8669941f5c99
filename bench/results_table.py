#!/usr/bin/env python3
"""Merges run_bench.sh's scenario objects into bench/results/<date>.json and renders RESULTS.md.

A scenario run again on the same day replaces the earlier object of that scenario. RESULTS.md is
the table (target vs reached) built from the JSON, followed by bench/analysis.md verbatim (where
the time goes, maintained by hand).

`--pairs floor|direct RUNS_JSONL` instead summarizes one interleaved scenario's runs (one object
per run: pair, side, result) into the object run_bench.sh records: per pair the ratio
gateway / reference, and the ratios' median and range.
"""
import argparse
import json
import os
import statistics

TARGETS = {
    "get": "≥ 15,000 calls/s, p99 < 5 ms",
    "generate": "(no target)",
    "fanout": "RSS < 400 MB, fan-out p99 < 250 ms",
    "fanout100k": "every terminal event delivered, RSS < 1 GB, fan-out p99 < 250 ms, "
                  "completions slip < 100 ms",
    "floor_watch": "(reference: gRPC's own cost of a held stream)",
    "download": "≥ 300 MB/s, RSS growth < 32 MB",
    "floor": "≥ 0.9× the floor's calls/s",
    "callgrind": "≤ 1.2× the floor's instructions per call",
    "single": "adds < 1 ms (p50) over the direct call",
    "direct": "≥ 0.8× a direct read's MB/s",
    "flood": "flooded p99 < 2× the quiet p99",
    "flood_refused": "(the flood taken apart: its refusals alone)",
    "flood_admitted": "(the flood taken apart: its admitted operations alone)",
    "replicas_get": "(recorded beside SQLite)",
    "replicas_generate": "(recorded beside SQLite)",
    "replicas_fanout": "every terminal event delivered, fan-out p99 < 250 ms",
}
TITLES = {
    "get": "(a) GetOperation, 64 concurrent callers",
    "generate": "(b) Generate → SUCCEEDED, 1,000 operations, zero-latency emulators",
    "fanout": "(c) 10,000 WatchOperation streams on 1,000 live operations",
    "fanout100k": "100,000 WatchOperation streams on 1,000 live operations (100 each), one "
                  "gateway process, load generator on the same machine",
    "floor_watch": "100,000 WatchOperation streams held by the floor (a bare callback server)",
    "download": "(d) Download of a ~200 MB asset",
    "floor": "GetOperation vs the floor, 64 callers, interleaved pairs",
    "callgrind": "GetOperation instructions per call (callgrind) vs the floor",
    "single": "Generate → SUCCEEDED at concurrency 1 vs the same job sent straight to the "
              "emulator, interleaved pairs",
    "direct": "Download (from custody) vs curl of the same file from the emulator, interleaved "
              "pairs",
    "flood": "One tenant's GetOperation while another floods Generate at 10× its limit, "
             "interleaved pairs",
    "flood_refused": "The same reads while the other tenant's Generate calls are nearly all "
                     "refused (limit 1/s, 500/s sent), interleaved pairs",
    "flood_admitted": "The same reads while the other tenant sends only what its limit admits "
                      "(50 Generate/s of 50/s), interleaved pairs",
    "replicas_get": "(a) GetOperation, 64 callers: 2 replicas on PostgreSQL vs SQLite, "
                    "interleaved pairs",
    "replicas_generate": "(b) Generate → SUCCEEDED ×1,000: 2 replicas on PostgreSQL vs SQLite, "
                         "interleaved pairs",
    "replicas_fanout": "(c) 10,000 watchers on 1,000 live operations: 2 replicas on PostgreSQL "
                       "vs SQLite",
}
ORDER = ["get", "generate", "fanout", "fanout100k", "floor_watch", "download", "floor", "callgrind",
         "single", "direct", "flood", "flood_refused", "flood_admitted",
         "replicas_get", "replicas_generate", "replicas_fanout"]
# Per replicas kind: the metric compared (postgres / sqlite) and how it reads.
REPLICA_METRIC = {
    "replicas_get": ("calls_per_second", "calls/s"),
    "replicas_generate": ("completed_per_second", "operations/s"),
    "replicas_fanout": ("fanout_p99_ms", "fan-out p99 ms from done_time"),
}


def fmt(value, digits=1):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def reached(obj):
    """(reached text, met: True/False/None) for one scenario object."""
    r = obj["result"]
    name = obj["scenario"]
    if "error" in r:
        return f"failed: {r['error']}", False
    if name in ("floor", "direct") or name.startswith("flood"):
        text, met = reached_pairs(name, r)
        if obj.get("note"):
            text += f" ({obj['note']})"
        return text, met
    if name == "single":
        return reached_single(obj)
    if name in REPLICA_METRIC:
        return reached_replicas(name, r)
    if name == "callgrind":
        g, f = r["gateway"], r["floor"]
        text = (f"gateway {fmt(g['ir_per_call'], 0)} instructions per GetOperation, floor "
                f"{fmt(f['ir_per_call'], 0)}: {fmt(r['ratio'], 2)}× ({fmt(g['calls'])} calls each "
                f"at 4 callers, idle background subtracted: gateway "
                f"{fmt(g['ir_idle_window'] / g['calls'], 0)}, floor "
                f"{fmt(f['ir_idle_window'] / f['calls'], 0)} per call); profile "
                f"`{r['profile']}`")
        return text, r["ratio"] <= 1.2
    if name == "get":
        lat = r["latency_ms"]
        text = (f"{fmt(r['calls_per_second'], 0)} calls/s; p50 {fmt(lat['p50'], 2)} ms, "
                f"p99 {fmt(lat['p99'], 2)} ms, p99.9 {fmt(lat['p999'], 2)} ms; "
                f"{fmt(r['errors'])} errors")
        return text, r["calls_per_second"] >= 15000 and lat["p99"] < 5
    if name == "generate":
        done = r["to_done_ms"]
        gen = r["generate_ms"]
        states = ", ".join(f"{k} {v}" for k, v in r["states"].items())
        text = (f"{fmt(r['ops'])} ops in {fmt(r['elapsed_s'], 2)} s "
                f"({fmt(r['completed_per_second'], 0)} ops/s, {r['concurrency']} in flight); "
                f"Generate→SUCCEEDED p50 {fmt(done['p50'], 0)} ms, p99 {fmt(done['p99'], 0)} ms; "
                f"Generate p50 {fmt(gen['p50'], 1)} ms, p99 {fmt(gen['p99'], 1)} ms; {states}")
        if r["errors"]:
            text += f"; errors {r['errors']}"
        return text, None
    if name == "fanout":
        rss = r.get("rss", {})
        fan = r["fanout_from_done_time_ms"]
        first = r["fanout_from_first_watcher_ms"]
        polls = upstream_rate(obj, r["wall_s"])
        text = (f"{fmt(r['watchers_terminal'])}/{fmt(r['watchers'])} streams got the terminal event "
                f"({fmt(r['watchers_opened_after_done'])} opened after completion); "
                f"RSS {fmt(r.get('rss_before_mb'), 0)} MB before, {fmt(r.get('rss_all_open_mb'), 0)} MB "
                f"with all streams open, peak {fmt(rss.get('rss_peak_mb'), 0)} MB; "
                f"from done_time p50 {fmt(fan['p50'], 0)} ms, p99 {fmt(fan['p99'], 0)} ms, "
                f"max {fmt(fan['max'], 0)} ms; from the op's first watcher p99 "
                f"{fmt(first['p99'], 0)} ms; {polls}")
        met = rss.get("rss_peak_mb", 1e9) < 400 and fan["p99"] < 250 and \
            r["watchers_terminal"] == r["watchers"]
        return text, met
    if name == "fanout100k":
        rss = r.get("rss", {})
        fan = r["fanout_from_done_time_ms"]
        slip = r.get("done_time_after_planned_completion_ms", {})
        codes = ", ".join(f"{k}: {v}" for k, v in r["stream_end_codes"].items())
        text = (f"{fmt(r['watchers_terminal'])}/{fmt(r['watchers'])} streams got the terminal event "
                f"(end codes {codes}), jobs planned at {fmt(r['processing_ms'] / 60000, 1)} min; streams "
                f"opened in {fmt(r['open_s'], 0)} s; RSS {fmt(r.get('rss_before_mb'), 0)} MB "
                f"before, {fmt(r.get('rss_all_open_mb'), 0)} MB with all streams open "
                f"({fmt((r['rss_all_open_mb'] - r['rss_before_mb']) * 1024 / r['watchers'], 1)} "
                f"KB per stream), peak {fmt(rss.get('rss_peak_mb'), 0)} MB; fan-out from "
                f"done_time p50 {fmt(fan['p50'], 0)} ms, p99 {fmt(fan['p99'], 0)} ms; ")
        if slip.get("p50", 0) < 0:
            # The operations ended before their planned completion: no slip to measure.
            text += (f"completion slip not measured: the operations ended "
                     f"{fmt(-slip['p50'] / 1000, 0)} s before the planned completion (p50)")
            slip_met = False
        else:
            text += (f"completions slip (done_time after the planned completion) p50 "
                     f"{fmt(slip.get('p50'), 0)} ms, p99 {fmt(slip.get('p99'), 0)} ms")
            slip_met = slip.get("p99", 1e9) < 100
        if obj.get("note"):
            text += f" ({obj['note']})"
        met = (r["watchers_terminal"] == r["watchers"] and rss.get("rss_peak_mb", 1e9) < 1024
               and fan["p99"] < 250 and slip_met)
        return text, met
    if name == "floor_watch":
        rss = r.get("rss", {})
        text = (f"{fmt(r['watchers_terminal'])}/{fmt(r['watchers'])} streams held and ended; "
                f"streams opened in {fmt(r['open_s'], 0)} s; floor RSS "
                f"{fmt(r.get('rss_before_mb'), 0)} MB before, {fmt(r.get('rss_all_open_mb'), 0)} "
                f"MB with all streams open "
                f"({fmt((r['rss_all_open_mb'] - r['rss_before_mb']) * 1024 / r['watchers'], 1)} "
                f"KB per stream), peak {fmt(rss.get('rss_peak_mb'), 0)} MB")
        return text, None
    if name == "download":
        warm = [run for run in r["runs"] if run["run"] > 1 and run["status"] == "OK"]
        size = r["runs"][0]["bytes"] / 1e6 if r["runs"] else 0
        sha = next((run.get("sha256_ok") for run in r["runs"] if "sha256_ok" in run), None)
        first = r["runs"][0] if r["runs"] else {}
        text = (f"{fmt(size, 0)} MB asset; warm runs median {fmt(r['warm_mb_per_s_median'], 0)} MB/s, "
                f"best {fmt(r['warm_mb_per_s_best'], 0)} MB/s (first run "
                f"{fmt(first.get('mb_per_s'), 0)} MB/s); RSS growth max "
                f"{fmt(r['warm_rss_growth_mb_max'], 1)} MB; sha256 "
                f"{'verified' if sha else 'not verified' if sha is None else 'MISMATCH'}")
        met = bool(warm) and r["warm_mb_per_s_median"] >= 300 and r["warm_rss_growth_mb_max"] < 32
        return text, met
    return json.dumps(r), None


def reached_single(obj):
    r = obj["result"]
    pairs = r["pairs"]
    added = [p["added_ms"] for p in pairs]
    added_fetch = [p["added_over_fetch_ms"] for p in pairs]
    syncs = obj.get("gateway", {})
    ops = obj.get("gateway_ops")
    sync_text = ""
    if ops and "fdatasyncs" in syncs:
        sync_text = (f"; gateway fdatasyncs {fmt(syncs['fdatasyncs'] / ops, 2)} and fsyncs "
                     f"{fmt(syncs.get('fsyncs', 0) / ops, 2)} per operation")
    text = (f"gateway adds {spread(added)} ms (p50 per pair) over PUT + long-poll, "
            f"{spread(added_fetch)} ms over PUT + long-poll + fetching the output, over "
            f"{len(pairs)} pairs; Generate→SUCCEEDED p50 gateway "
            f"{spread([p['gateway_p50_ms'] for p in pairs])} ms, direct "
            f"{spread([p['direct_p50_ms'] for p in pairs])} ms, direct with the output "
            f"{spread([p['direct_fetch_p50_ms'] for p in pairs])} ms{sync_text}")
    return text, statistics.median(added) < 1


def spread(values, digits=2):
    """'median (min–max)' of a list of numbers."""
    return (f"{fmt(statistics.median(values), digits)} "
            f"({fmt(min(values), digits)}–{fmt(max(values), digits)})")


def reached_pairs(name, r):
    pairs = r["pairs"]
    ratios = [p["ratio"] for p in pairs]
    if name == "floor":
        text = (f"gateway/floor calls/s {spread(ratios)} over {len(pairs)} pairs; gateway "
                f"{spread([p['gateway'] for p in pairs], 0)} calls/s, floor "
                f"{spread([p['reference'] for p in pairs], 0)} calls/s; server CPU per call "
                f"gateway {spread([p['gateway_cpu_us_per_call'] for p in pairs], 1)} µs, floor "
                f"{spread([p['reference_cpu_us_per_call'] for p in pairs], 1)} µs (ratio "
                f"{spread([p['cpu_ratio'] for p in pairs])}); gateway p99 "
                f"{spread([p['gateway_p99_ms'] for p in pairs])} ms, floor p99 "
                f"{spread([p['reference_p99_ms'] for p in pairs])} ms")
        return text, statistics.median(ratios) >= 0.9
    if name.startswith("flood"):
        codes = {}
        for p in pairs:
            for code, n in p["flood_codes"].items():
                codes[code] = codes.get(code, 0) + n
        sent = sum(p["flood_sent"] or 0 for p in pairs)
        seconds = sum(p["flood_seconds"] or 0 for p in pairs)
        text = (f"flooded/quiet p99 {spread(ratios)} over {len(pairs)} pairs; quiet p99 "
                f"{spread([p['quiet_p99_ms'] for p in pairs])} ms, flooded p99 "
                f"{spread([p['flooded_p99_ms'] for p in pairs])} ms; reads/s quiet "
                f"{spread([p['quiet_calls_per_second'] for p in pairs], 0)}, flooded "
                f"{spread([p['flooded_calls_per_second'] for p in pairs], 0)}; reader errors "
                f"{sum(p['quiet_errors'] + p['flooded_errors'] for p in pairs)}; flood "
                f"{fmt(sent)} Generate in {fmt(seconds, 1)} s: OK {fmt(codes.get('OK', 0))}, "
                f"RESOURCE_EXHAUSTED {fmt(codes.get('8', 0))}, other "
                f"{fmt(sum(n for c, n in codes.items() if c not in ('OK', '8')))}")
        return text, (statistics.median(ratios) < 2) if name == "flood" else None
    text = (f"gateway/direct MB/s {spread(ratios)} over {len(pairs)} pairs; gateway "
            f"{spread([p['gateway'] for p in pairs], 0)} MB/s, curl from the emulator "
            f"{spread([p['reference'] for p in pairs], 0)} MB/s; gateway CPU "
            f"{spread([p['gateway_cpu_s_per_gb'] for p in pairs], 2)} s per GB")
    if all(p.get("direct_client_cpu_s_per_gb") for p in pairs):
        text += (f"; CPU s per GB, server + client: gateway "
                 f"{spread([p['gateway_cpu_s_per_gb'] for p in pairs], 2)} + grpc_load "
                 f"{spread([p['gateway_client_cpu_s_per_gb'] for p in pairs], 2)}, emulator "
                 f"{spread([p['direct_server_cpu_s_per_gb'] for p in pairs], 2)} + curl "
                 f"{spread([p['direct_client_cpu_s_per_gb'] for p in pairs], 2)}")
    floors = [p for p in pairs if p.get("floor")]
    if floors:
        text += (f"; the floor (a bare gRPC server streaming the same file, floor_server "
                 f"--download_file) {spread([p['floor'] for p in floors], 0)} MB/s: "
                 f"gateway/floor {spread([p['gateway'] / p['floor'] for p in floors])}, "
                 f"floor/direct {spread([p['floor'] / p['reference'] for p in floors])}, floor "
                 f"CPU {spread([p['floor_cpu_s_per_gb'] for p in floors], 2)} s per GB")
    files = [p["file_read"] for p in pairs if p.get("file_read")]
    if files:
        text += f"; local read of the custody file {spread(files, 0)} MB/s"
    if any(p.get("in_custody") for p in pairs):
        text += "; served from custody"
    return text, statistics.median(ratios) >= 0.8


def reached_replicas(name, r):
    pairs = r["pairs"]
    if not pairs:
        return "failed: no complete pair", False
    metric, unit = REPLICA_METRIC[name]
    ratios = [p["ratio"] for p in pairs]

    def both(key, digits=0):
        return (f"SQLite {spread([p['sqlite'][key] for p in pairs], digits)}, PostgreSQL "
                f"{spread([p['postgres'][key] for p in pairs], digits)}")
    text = (f"PostgreSQL/SQLite {unit} {spread(ratios)} over {len(pairs)} pair(s); "
            f"{unit}: {both(metric, 0 if metric != 'fanout_p99_ms' else 1)}")
    met = None
    if name == "replicas_get":
        text += (f"; p99 ms {both('p99_ms', 2)}; server CPU per call µs (summed over the "
                 f"replicas) {both('cpu_us_per_call', 1)}; errors {both('errors')}")
    elif name == "replicas_generate":
        text += (f"; Generate→SUCCEEDED p50 ms {both('to_done_p50_ms')}, p99 ms "
                 f"{both('to_done_p99_ms')}; errors {both('errors')}")
        if all(p["postgres"].get("postgres_cpu_ms_per_op") is not None for p in pairs):
            text += (f"; gateway CPU ms per operation (summed over the replicas) "
                     f"{both('gateways_cpu_ms_per_op', 2)}; the PostgreSQL server's CPU ms per "
                     f"operation "
                     f"{spread([p['postgres']['postgres_cpu_ms_per_op'] for p in pairs], 2)}")
    else:
        text += (f"; terminal events {both('terminal')} of {both('watchers')} (opened after "
                 f"the operation was done, so not timed: {both('opened_after_done')}; streams "
                 f"ended with an error: {both('errors')}); peak RSS MB (summed) "
                 f"{both('rss_peak_mb')}")
        met = all(p["postgres"]["terminal"] + p["postgres"]["opened_after_done"] ==
                  p["postgres"]["watchers"] and p["postgres"]["errors"] == 0 and
                  p["postgres"]["fanout_p99_ms"] < 250 for p in pairs)
    return text, met


def replica_figures(kind, r):
    """The figures of one replicas run compared between the sides."""
    errors = sum(r.get("errors", {}).values()) if isinstance(r.get("errors"), dict) else \
        r.get("errors", 0)
    # CPU of the gateway processes and of PostgreSQL (server and backends) over the run.
    cpu = {"gateways_cpu_s": r.get("gateways_cpu_s"), "postgres_cpu_s": r.get("postgres_cpu_s")}
    if kind == "replicas_get":
        return {"calls_per_second": r["calls_per_second"], "p99_ms": r["latency_ms"]["p99"],
                "cpu_us_per_call": r.get("server_cpu_us_per_call"), "errors": errors, **cpu}
    if kind == "replicas_generate":
        per_op = {k.replace("_cpu_s", "_cpu_ms_per_op"): (v * 1000 / r["ops"] if v is not None
                                                          else None) for k, v in cpu.items()}
        return {"completed_per_second": r["completed_per_second"],
                "to_done_p50_ms": r["to_done_ms"]["p50"], "to_done_p99_ms": r["to_done_ms"]["p99"],
                "errors": errors, **cpu, **per_op}
    return {"fanout_p99_ms": r["fanout_from_done_time_ms"]["p99"],
            "terminal": r["watchers_terminal"], "watchers": r["watchers"],
            # Streams opened after their operation was done (excluded from the latency; their
            # stream still ends OK with the state) and streams that ended with an error.
            "opened_after_done": r.get("watchers_opened_after_done", 0),
            "errors": sum(n for code, n in r.get("stream_end_codes", {}).items() if code != "0"),
            "rss_peak_mb": r.get("rss", {}).get("rss_peak_mb"), **cpu}


def summarize_pairs(kind, runs):
    by_pair = {}
    for run in runs:
        by_pair.setdefault(run["pair"], {})[run["side"]] = run["result"]
    pairs = []
    for pair, sides in sorted(by_pair.items()):
        g = sides.get("gateway")
        if kind in REPLICA_METRIC:
            sq, pg = sides.get("sqlite"), sides.get("postgres")
            if not sq or not pg or "error" in sq or "error" in pg:
                continue
            a, b = replica_figures(kind, sq), replica_figures(kind, pg)
            metric = REPLICA_METRIC[kind][0]
            pairs.append({"pair": pair, "sqlite": a, "postgres": b,
                          "ratio": b[metric] / a[metric] if a[metric] else None})
        elif kind == "flood":
            q, f = sides.get("quiet"), sides.get("flooded")
            if not q or not f or "error" in q or "error" in f:
                continue
            flood = f.get("flood", {})
            pairs.append({
                "pair": pair, "quiet_p99_ms": q["latency_ms"]["p99"],
                "flooded_p99_ms": f["latency_ms"]["p99"],
                "ratio": f["latency_ms"]["p99"] / q["latency_ms"]["p99"],
                "quiet_calls_per_second": q["calls_per_second"],
                "flooded_calls_per_second": f["calls_per_second"],
                "quiet_errors": q["errors"], "flooded_errors": f["errors"],
                "flood_sent": flood.get("sent"), "flood_codes": flood.get("codes", {}),
                "flood_seconds": flood.get("seconds")})
        elif kind == "single":
            d, df = sides.get("direct"), sides.get("direct_fetch")
            if not g or not d or not df or "error" in g or g.get("errors") or d["errors"] or \
                    df["errors"]:
                continue
            gp50, dp50 = g["to_done_ms"]["p50"], d["to_done_ms"]["p50"]
            fp50 = df["to_done_ms"]["p50"]
            pairs.append({"pair": pair, "gateway_p50_ms": gp50, "direct_p50_ms": dp50,
                          "direct_fetch_p50_ms": fp50, "gateway_p99_ms": g["to_done_ms"]["p99"],
                          "direct_p99_ms": d["to_done_ms"]["p99"], "added_ms": gp50 - dp50,
                          "added_over_fetch_ms": gp50 - fp50, "ratio": gp50 / dp50})
        elif kind == "floor":
            f = sides.get("floor")
            if not g or not f or "error" in g or "error" in f:
                continue
            pairs.append({
                "pair": pair, "gateway": g["calls_per_second"], "reference": f["calls_per_second"],
                "ratio": g["calls_per_second"] / f["calls_per_second"],
                "gateway_cpu_us_per_call": g.get("server_cpu_us_per_call"),
                "reference_cpu_us_per_call": f.get("server_cpu_us_per_call"),
                "cpu_ratio": g["server_cpu_us_per_call"] / f["server_cpu_us_per_call"],
                "gateway_p99_ms": g["latency_ms"]["p99"], "reference_p99_ms": f["latency_ms"]["p99"],
                "gateway_errors": g["errors"], "reference_errors": f["errors"]})
        else:
            d = sides.get("direct")
            if not g or not d or "error" in g or g["runs"][0]["status"] != "OK" or \
                    d["status"] != 200:
                continue
            run = g["runs"][0]
            direct = d["bytes"] / 1e6 / d["seconds"]
            f = sides.get("file")
            fl = sides.get("floor")
            floor_run = fl["runs"][0] if fl and "error" not in fl and \
                fl["runs"][0]["status"] == "OK" else None
            pairs.append({
                "file_read": f["bytes"] / 1e6 / f["seconds"] if f else None,
                "floor": floor_run["mb_per_s"] if floor_run else None,
                "floor_cpu_s_per_gb": floor_run.get("server_cpu_s", 0) /
                (floor_run["bytes"] / 1e9) if floor_run else None,
                "in_custody": run.get("in_custody"),
                "pair": pair, "gateway": run["mb_per_s"], "reference": direct,
                "ratio": run["mb_per_s"] / direct, "bytes": run["bytes"],
                "direct_bytes": d["bytes"],
                "gateway_cpu_s_per_gb": run.get("server_cpu_s", 0) / (run["bytes"] / 1e9),
                # Both ends' CPU per GB: gateway + grpc_load against emulator + curl.
                "gateway_client_cpu_s_per_gb": run.get("client_cpu_s", 0) / (run["bytes"] / 1e9),
                "direct_server_cpu_s_per_gb": d.get("server_cpu_s", 0) / (d["bytes"] / 1e9),
                "direct_client_cpu_s_per_gb": d.get("client_cpu_s", 0) / (d["bytes"] / 1e9)})
    ratios = [p["ratio"] for p in pairs]
    out = {"kind": kind, "pairs": pairs, "runs": runs}
    if ratios:
        out["ratio_median"] = statistics.median(ratios)
        out["ratio_min"] = min(ratios)
        out["ratio_max"] = max(ratios)
    else:
        out["error"] = "no complete pair"
    return out


def upstream_rate(obj, seconds):
    before, after = obj.get("upstream_before"), obj.get("upstream_after")
    if not before or not after or not seconds:
        return "upstream calls: not sampled"
    polls = after["emulator_long_polls"] - before["emulator_long_polls"]
    gets = after["emulator_gets"] - before["emulator_gets"]
    puts = after["emulator_puts"] - before["emulator_puts"]
    gw = after["gateway_upstream_requests"] - before["gateway_upstream_requests"]
    return (f"upstream over {fmt(seconds, 1)} s: {fmt(puts)} submits, {fmt(gets)} GETs "
            f"({fmt(polls)} long-polls) = {fmt(gets / seconds, 1)} polls/s; "
            f"gateway musicgw_upstream_requests_total +{fmt(gw, 0)}")


def throughput(obj):
    r = obj["result"]
    return r.get("calls_per_second", r.get("completed_per_second", 0)) or 0


def median_runs(objs):
    """scenario -> (its median run by throughput, note on the repeats or "")."""
    groups = {}
    for o in objs:
        groups.setdefault(o["scenario"], []).append(o)
    out = {}
    for name, runs in groups.items():
        runs = sorted(runs, key=throughput)
        median = runs[(len(runs) - 1) // 2]
        note = ""
        if len(runs) > 1 and name == "get":
            note = (f" (median of {len(runs)} runs; {fmt(throughput(runs[0]), 0)}–"
                    f"{fmt(throughput(runs[-1]), 0)} calls/s, p99 "
                    f"{fmt(min(x['result']['latency_ms']['p99'] for x in runs), 2)}–"
                    f"{fmt(max(x['result']['latency_ms']['p99'] for x in runs), 2)} ms)")
        out[name] = (median, note)
    return out


def load_note(objs):
    loads = [o["machine"]["load_avg_1m"] for o in objs if "load_avg_1m" in o.get("machine", {})]
    if not loads:
        return ""
    return (f" 1-minute load average as each scenario started: {fmt(min(loads), 1)}–"
            f"{fmt(max(loads), 1)} on {objs[0]['machine'].get('nproc')} vCPUs.")


def commits(by_name):
    """The commit each scenario was measured at: one, or each with its scenarios."""
    at = {}
    for name in ORDER:
        if name in by_name:
            at.setdefault(by_name[name]["machine"].get("git_commit"), []).append(name)
    if len(at) <= 1:
        return next(iter(at), "?")
    return ", ".join(f"{commit} ({', '.join(names)})" for commit, names in at.items())


def render(objs, path, analysis_path):
    medians = median_runs(objs)
    by_name = {name: median for name, (median, _) in medians.items()}
    machine = next(iter(by_name.values()))["machine"] if by_name else {}
    lines = [
        "# Benchmark results",
        "",
        "Generated by `bench/run_bench.sh` (`bench/results_table.py` renders this table from "
        "`bench/results/<date>.json`; the analysis below the table is `bench/analysis.md`, the "
        "chaos soak's records at the end `bench/soak/results.md`).",
        "",
        f"Machine: {machine.get('nproc')} vCPUs ({machine.get('cpu_model')}), "
        f"{fmt(machine.get('mem_total_mb'))} MB RAM, kernel {machine.get('kernel')}; "
        f"{machine.get('build_type')} build at {commits(by_name)}. "
        "Load generator, gateway and emulators share the same cores." + load_note(objs),
        "",
        "| scenario | target | reached | met |",
        "|---|---|---|---|",
    ]
    for name in ORDER:
        if name not in by_name:
            continue
        text, met = reached(by_name[name])
        text += medians[name][1]
        mark = "–" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {TITLES[name]} | {TARGETS[name]} | {text} | {mark} |")
    script = next(iter(by_name.values())).get("script", "") if by_name else ""
    lines += ["", f"Run with `{script}` (and the other scenarios by name); grpc_load commands "
              "(each against a fresh `scripts/sandbox.sh` stack):", ""]
    for name in ORDER:
        if name in by_name:
            lines.append(f"- {name}: `{by_name[name]['command']}`")
    lines.append("")
    # The hand-kept analysis, then the chaos soak's own records (bench/soak/soak.py --record).
    soak_path = os.path.join(os.path.dirname(analysis_path), "soak", "results.md")
    for part in (analysis_path, soak_path):
        if os.path.exists(part):
            with open(part) as f:
                lines.append(f.read().rstrip())
            lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--merge", nargs=2, metavar=("NEW_JSONL", "DATE_JSON"))
    parser.add_argument("--markdown")
    parser.add_argument("--pairs", nargs=2, metavar=("KIND", "RUNS_JSONL"))
    args = parser.parse_args()
    if args.pairs:
        kind, path = args.pairs
        with open(path) as f:
            runs = [json.loads(line) for line in f if line.strip()]
        print(json.dumps(summarize_pairs(kind, runs)))
        return
    if not args.merge or not args.markdown:
        parser.error("--merge and --markdown are required")
    new_path, date_path = args.merge
    objs = []
    if os.path.exists(date_path):
        with open(date_path) as f:
            objs = json.load(f)
    with open(new_path) as f:
        fresh = [json.loads(line) for line in f if line.strip()]
    names = {o["scenario"] for o in fresh}
    objs = [o for o in objs if o["scenario"] not in names] + fresh
    objs.sort(key=lambda o: ORDER.index(o["scenario"]) if o["scenario"] in ORDER else 99)
    with open(date_path, "w") as f:
        json.dump(objs, f, indent=1)
        f.write("\n")
    here = os.path.dirname(os.path.abspath(__file__))
    render(objs, args.markdown, os.path.join(here, "analysis.md"))


if __name__ == "__main__":
    main()
