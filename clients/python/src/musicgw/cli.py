"""musicgw-cli: the musicgw gateway from a shell.

Target and key come from flags, else the environment (MUSICGW_TARGET, MUSICGW_API_KEY,
MUSICGW_CA_CERT), else a config file (--config, $MUSICGW_CONFIG or ~/.config/musicgw/config.ini,
section [default] or --profile):

    [default]
    target = musicgw.example.com:443
    api_key = mgw_...
    tls = true
    ca_cert = /etc/ssl/musicgw-ca.pem

Exit codes: 0 success; 1 the operation ended FAILED or CANCELLED; 2 usage or configuration
error; 3 the gateway rejected the request (INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE,
ALREADY_EXISTS); 4 authentication (UNAUTHENTICATED, PERMISSION_DENIED); 5 NOT_FOUND; 6 quota
(RESOURCE_EXHAUSTED); 7 gateway unreachable or too slow (UNAVAILABLE, DEADLINE_EXCEEDED);
8 download verification failed; 9 any other error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

import grpc
from google.protobuf import json_format

import musicgw
from musicgw import errors
from musicgw._proto.musicgw.v1 import musicgw_pb2 as pb

EXIT_OK = 0
EXIT_OPERATION_FAILED = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
EXIT_AUTH = 4
EXIT_NOT_FOUND = 5
EXIT_QUOTA = 6
EXIT_UNAVAILABLE = 7
EXIT_VERIFY = 8
EXIT_OTHER = 9

_EXIT_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_REJECTED,
    grpc.StatusCode.FAILED_PRECONDITION: EXIT_REJECTED,
    grpc.StatusCode.OUT_OF_RANGE: EXIT_REJECTED,
    grpc.StatusCode.ALREADY_EXISTS: EXIT_REJECTED,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_AUTH,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_AUTH,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED: EXIT_QUOTA,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS: EXIT_VERIFY,
}


class UsageError(Exception):
    pass


# -- output -------------------------------------------------------------------------------
def to_dict(message) -> Dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def emit_json(value) -> None:
    print(json.dumps(value, sort_keys=True), flush=True)


def short_enum(enum_type, value: int, prefix: str) -> str:
    return enum_type.Name(value).removeprefix(prefix)


class Bar:
    """A one-line progress display on a terminal (redrawn in place), or plain lines elsewhere."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self.last = ""
        self.last_time = 0.0

    def show(self, line: str, force: bool = False) -> None:
        """force: a line that must appear (a state change); others are throttled off a terminal."""
        if line == self.last:
            return
        now = time.monotonic()
        if not self.tty and not force and now - self.last_time < 1.0:
            return
        self.last, self.last_time = line, now
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()


def bar(fraction: float, width: int = 24) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


# An operation's stages, in order; the bar fills as it moves through them.
_STAGES = [pb.OPERATION_STATE_QUEUED, pb.OPERATION_STATE_RUNNING, pb.OPERATION_STATE_SUCCEEDED]


def status_fields(op: pb.Operation, started: float) -> List[str]:
    """The pieces of a watch status line, in order. Each piece is independent, so a new fact
    (an ETA, a percentage from the provider) is one more entry here."""
    stage = _STAGES.index(op.state) if op.state in _STAGES else len(_STAGES) - 1
    fields = [
        bar((stage + 1) / len(_STAGES) if op.done or stage else 0.15),
        short_enum(pb.OperationState, op.state, "OPERATION_STATE_"),
    ]
    if op.submission and not op.done:
        fields.append("submission " + short_enum(pb.SubmissionState, op.submission,
                                                 "SUBMISSION_STATE_").lower())
    if op.provider:
        fields.append(short_enum(pb.Provider, op.provider, "PROVIDER_").lower())
    fields.append(f"{time.monotonic() - started:.0f}s")
    if op.stage and not op.done:
        fields.append(op.stage)
    eta = eta_text(op)
    if eta:
        fields.append(eta)
    if op.state == pb.OPERATION_STATE_FAILED and op.error.message:
        fields.append(op.error.message)
    return fields


def eta_text(op: pb.Operation) -> str:
    """"eta ~42s" for a live operation the gateway gave an estimate; "" otherwise. The gateway's
    estimate comes from recent runs of the same provider account and task: a guess, not a
    promise."""
    if op.done or not op.HasField("estimated_done_time"):
        return ""
    left = op.estimated_done_time.ToMicroseconds() / 1e6 - time.time()
    return f"eta ~{max(left, 0):.0f}s"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# -- configuration -------------------------------------------------------------------------
def load_config(args) -> Dict[str, str]:
    path = args.config or os.environ.get("MUSICGW_CONFIG") or os.path.join(
        os.path.expanduser("~"), ".config", "musicgw", "config.ini")
    if not os.path.exists(path):
        if args.config:
            raise UsageError(f"config file {path} not found")
        return {}
    parser = configparser.ConfigParser()
    parser.read(path)
    if not parser.has_section(args.profile):
        if args.profile != "default":
            raise UsageError(f"profile [{args.profile}] not in {path}")
        return {}
    return dict(parser.items(args.profile))


def make_client(args) -> musicgw.Client:
    config = load_config(args)
    target = args.target or os.environ.get("MUSICGW_TARGET") or config.get("target")
    api_key = args.api_key or os.environ.get("MUSICGW_API_KEY") or config.get("api_key")
    if not target:
        raise UsageError("no target: pass --target, set MUSICGW_TARGET or add target= to the config")
    if not api_key:
        raise UsageError("no API key: pass --api-key, set MUSICGW_API_KEY or add api_key= to the config")
    tls = args.tls
    if tls is None and "tls" in config:
        tls = config["tls"].strip().lower() in ("1", "true", "yes", "on")
    ca_cert = args.ca_cert or os.environ.get("MUSICGW_CA_CERT") or config.get("ca_cert")
    if ca_cert and tls is None:
        tls = True
    return musicgw.Client(target, api_key, tls=tls, root_certificates=ca_cert,
                          server_name=args.server_name or config.get("server_name"),
                          timeout=args.timeout)


# -- generate ------------------------------------------------------------------------------
def enum_arg(enum_type, prefix: str):
    names = [n.removeprefix(prefix).lower() for n in enum_type.keys() if not n.endswith("UNSPECIFIED")]

    def parse(text: str) -> int:
        key = text.strip().lower().replace("-", "_").replace("#", "_sharp")
        if key not in names:
            raise argparse.ArgumentTypeError(f"one of {', '.join(names)}")
        return enum_type.Value(prefix + key.upper())

    return parse


def text_or_file(text: str) -> str:
    """A value, or @path for the contents of a file (lyrics)."""
    if text.startswith("@"):
        with open(text[1:], encoding="utf-8") as f:
            return f.read()
    return text


def add_task_parsers(sub, common: argparse.ArgumentParser) -> None:
    def kind(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        p.set_defaults(task_kind=name)
        return p

    p = kind("parametric", "instrumental from musical parameters (Loudly)")
    p.add_argument("--genre", required=True)
    p.add_argument("--genre-blend")
    p.add_argument("--duration", type=int, help="seconds, 30 to 420")
    p.add_argument("--energy", type=enum_arg(pb.Energy, "ENERGY_"))
    p.add_argument("--bpm", type=int)
    p.add_argument("--key-root", type=enum_arg(pb.KeyRoot, "KEY_ROOT_"), help="c, c_sharp, ... b")
    p.add_argument("--key-quality", type=enum_arg(pb.KeyQuality, "KEY_QUALITY_"))
    p.add_argument("--instrument", action="append", default=[], help="repeatable")
    p.add_argument("--structure", type=int)
    p.add_argument("--model", type=enum_arg(pb.LoudlyModel, "LOUDLY_MODEL_"))

    p = kind("text", "instrumental from a text prompt (Loudly or Soundpiece)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--duration", type=int, help="seconds, 30 to 420 (Loudly)")
    p.add_argument("--structure", type=int)
    p.add_argument("--model", type=enum_arg(pb.LoudlyModel, "LOUDLY_MODEL_"))

    p = kind("song", "song with vocals (Soundpiece)")
    p.add_argument("--lyrics", required=True, type=text_or_file, help="text, or @file")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompt")
    group.add_argument("--reference", help="URL of a track whose style to follow")

    p = kind("instrumental", "instrumental from a prompt or reference (Soundpiece)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompt")
    group.add_argument("--reference", help="URL of a track whose style to follow")

    for name, help_text in (("sample", "short sample (Soundpiece)"),
                            ("fx", "one-shot sound effect (Soundpiece)")):
        p = kind(name, help_text)
        p.add_argument("--prompt", required=True)
        p.add_argument("--duration", type=float, required=True, help="seconds")
        p.add_argument("--loop", action="store_true", help="a seamless loop")

    p = kind("remix-song", "remix of a song with vocals (Soundpiece)")
    p.add_argument("--source", required=True, help="URL of the song")
    p.add_argument("--lyrics", required=True, type=text_or_file)
    p.add_argument("--prompt", required=True)
    p.add_argument("--variations", type=int)

    p = kind("remix-instrumental", "remix of an instrumental (Soundpiece)")
    p.add_argument("--source", required=True, help="URL of the instrumental")
    p.add_argument("--variations", type=int)

    p = kind("stems", "separate vocals, drums, bass and other (Soundpiece)")
    p.add_argument("--source", required=True, help="URL of the track")

    p = kind("cut-down", "shorten a track to a target length (Soundpiece)")
    p.add_argument("--source", required=True, help="URL of the track")
    p.add_argument("--target-duration", type=float, required=True, help="seconds")


def build_task(args):
    k = args.task_kind
    if k == "parametric":
        task = pb.ParametricMusicTask(genre=args.genre, genre_blend=args.genre_blend or "",
                                      instruments=args.instrument)
        for field, value in (("duration_seconds", args.duration), ("bpm", args.bpm),
                             ("structure_id", args.structure), ("energy", args.energy),
                             ("key_root", args.key_root), ("key_quality", args.key_quality),
                             ("model", args.model)):
            if value is not None:
                setattr(task, field, value)
        return task
    if k == "text":
        task = pb.TextToMusicTask(prompt=args.prompt)
        for field, value in (("duration_seconds", args.duration),
                             ("structure_id", args.structure), ("model", args.model)):
            if value is not None:
                setattr(task, field, value)
        return task
    if k == "song":
        task = pb.SongTask(lyrics=args.lyrics, prompt=args.prompt or "")
        if args.reference:
            task.reference.url = args.reference
        return task
    if k == "instrumental":
        task = pb.InstrumentalTask(prompt=args.prompt or "")
        if args.reference:
            task.reference.url = args.reference
        return task
    if k == "sample":
        return pb.SampleTask(prompt=args.prompt, duration_seconds=args.duration, loopable=args.loop)
    if k == "fx":
        return pb.SoundEffectTask(prompt=args.prompt, duration_seconds=args.duration,
                                  loopable=args.loop)
    if k == "remix-song":
        task = pb.RemixSongTask(lyrics=args.lyrics, prompt=args.prompt)
        task.source.url = args.source
        if args.variations is not None:
            task.variations = args.variations
        return task
    if k == "remix-instrumental":
        task = pb.RemixInstrumentalTask()
        task.source.url = args.source
        if args.variations is not None:
            task.variations = args.variations
        return task
    if k == "stems":
        task = pb.SeparateStemsTask()
        task.source.url = args.source
        return task
    if k == "cut-down":
        task = pb.CutDownTask(target_duration_seconds=args.target_duration)
        task.source.url = args.source
        return task
    raise UsageError(f"unknown task kind {k}")


def cmd_generate(client, args) -> int:
    op = client.generate(build_task(args), provider=args.provider,
                         allow_fallback=args.fallback, validate_only=args.validate_only,
                         request_id=args.request_id)
    if args.validate_only:
        if args.json:
            emit_json({"valid": True, "operation": to_dict(op)})
        else:
            print("valid")
        return EXIT_OK
    if not (args.watch or args.wait or args.download):
        if args.json:
            emit_json(to_dict(op))
        else:
            print(op.name)
        return EXIT_OK
    if not args.json:
        print(op.name, file=sys.stderr)
    if args.watch or args.download:
        op = follow(client, op.name, args.json)
    else:
        op = client.wait(op, timeout=args.wait_timeout)
        if args.json:
            emit_json(to_dict(op))
    if op.state != pb.OPERATION_STATE_SUCCEEDED:
        if not args.json:
            print(f"{op.name} ended {musicgw.state_name(op.state)}: {op.error.message}",
                  file=sys.stderr)
        return EXIT_OPERATION_FAILED
    if not args.json and not args.download:
        print(op.name)
    if args.download:
        for asset in op.outputs:
            fetch(client, asset.name, args.download, args.json, verify=True, into_dir=True)
    return EXIT_OK


# -- watch / wait / get ------------------------------------------------------------------
def follow(client, name: str, as_json: bool) -> pb.Operation:
    """Streams an operation to its end: JSON lines, or a live status line."""
    started = time.monotonic()
    display = None if as_json else Bar()
    op = None

    def reconnected(err, last):
        if as_json:
            emit_json({"reconnect": {"code": err.code.name, "after_sequence": last}})
        elif display is not None and not display.tty:
            print(f"reconnecting after sequence {last} ({err.code.name})", file=sys.stderr)

    try:
        for event in client.watch(name, on_reconnect=reconnected):
            op = event.operation
            if as_json:
                emit_json({"event": to_dict(event)})
            else:
                display.show("  ".join(status_fields(op, started)), force=True)
    finally:
        if display is not None:
            display.done()
    if op is None:
        op = client.get(name)
    return op


def cmd_watch(client, args) -> int:
    op = follow(client, args.operation, args.json)
    if not args.json:
        print(f"{op.name} {musicgw.state_name(op.state)}")
        for asset in op.outputs:
            print(f"  {asset.name}  {short_enum(pb.AssetKind, asset.kind, 'ASSET_KIND_')}  "
                  f"{asset.duration_seconds:.1f}s  {asset.content_type}")
    return EXIT_OK if op.state == pb.OPERATION_STATE_SUCCEEDED else EXIT_OPERATION_FAILED


def cmd_wait(client, args) -> int:
    op = client.wait(args.operation, timeout=args.wait_timeout)
    print_operation(op, args.json)
    return EXIT_OK if op.state == pb.OPERATION_STATE_SUCCEEDED else EXIT_OPERATION_FAILED


def print_operation(op: pb.Operation, as_json: bool) -> None:
    if as_json:
        emit_json(to_dict(op))
        return
    print(f"{op.name}  {musicgw.state_name(op.state)}  "
          f"{short_enum(pb.TaskKind, op.task, 'TASK_KIND_').lower()}  "
          f"{short_enum(pb.Provider, op.provider, 'PROVIDER_').lower()}")
    if op.state == pb.OPERATION_STATE_FAILED:
        print(f"  error: {op.error.message}")
    if op.stage and not op.done:
        print(f"  stage: {op.stage}")
    eta = eta_text(op)
    if eta:
        print(f"  {eta} (estimated done {op.estimated_done_time.ToJsonString()})")
    for asset in op.outputs:
        print(f"  {asset.name}  {asset.content_type}  {asset.duration_seconds:.1f}s")


def cmd_get(client, args) -> int:
    print_operation(client.get(args.operation), args.json)
    return EXIT_OK


# -- download ------------------------------------------------------------------------------
def fetch(client, ref: str, output: Optional[str], as_json: bool, verify: bool,
          restart: bool = False, into_dir: bool = False) -> musicgw.DownloadResult:
    """Downloads an asset, or every output of an operation when ref names one."""
    if "/assets/" not in ref:
        op = client.get(ref)
        if not op.outputs:
            raise UsageError(f"{ref} has no outputs (state {musicgw.state_name(op.state)})")
        result = None
        for asset in op.outputs:
            result = fetch(client, asset.name, output, as_json, verify, restart,
                           into_dir=into_dir or len(op.outputs) > 1)
        return result
    path = output or "."
    if into_dir or os.path.isdir(path) or path.endswith("/"):
        os.makedirs(path, exist_ok=True)
        path = os.path.join(path, asset_file_name(client, ref))
    display = None if as_json else Bar()
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        if display is None:
            return
        rate = done / max(time.monotonic() - started, 1e-3)
        name = os.path.basename(path)
        if total:
            line = (f"{bar(done / total)} {human_bytes(done)} / {human_bytes(total)}  "
                    f"{human_bytes(rate)}/s  {name}")
        else:
            line = f"{human_bytes(done)}  {human_bytes(rate)}/s  {name}"
        display.show(line, force=0 < total == done)

    def resumed(err, at):
        if as_json:
            emit_json({"resume": {"code": err.code.name, "offset": at}})

    try:
        result = client.download(ref, path, resume=not restart, verify=verify,
                                 on_progress=progress, on_resume=resumed)
    finally:
        if display is not None:
            display.done()
    if as_json:
        emit_json({"download": {"asset": ref, "path": result.path, "size": result.size,
                                "sha256": result.sha256, "content_type": result.content_type,
                                "started_at": result.started_at,
                                "resumptions": result.resumptions, "verified": result.verified,
                                "digest_source": result.digest_source}})
    else:
        check = "sha256 verified" if result.verified else "not verified"
        print(f"{result.path}  {human_bytes(result.size)}  {check}  {result.sha256}")
    return result


def asset_file_name(client, ref: str) -> str:
    op_id = ref.split("/")[1]
    index = ref.rsplit("/", 1)[1]
    op = client.get(ref.split("/assets/")[0])
    asset = next((a for a in op.outputs if a.name == ref), None)
    ext = {pb.AUDIO_FORMAT_MP3: ".mp3", pb.AUDIO_FORMAT_FLAC: ".flac",
           pb.AUDIO_FORMAT_WAV: ".wav"}.get(asset.format if asset else 0, ".bin")
    return f"{op_id}-{index}{ext}"


def cmd_download(client, args) -> int:
    fetch(client, args.ref, args.output, args.json, verify=not args.no_verify,
          restart=args.restart)
    return EXIT_OK


# -- list / cancel / quota / providers -----------------------------------------------------
def cmd_list(client, args) -> int:
    ops = list(client.list(states=args.state, provider=args.provider, task=args.task or 0,
                           limit=args.limit))
    if args.json:
        emit_json({"operations": [to_dict(op) for op in ops]})
        return EXIT_OK
    for op in ops:
        created = op.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        print(f"{op.name}  {musicgw.state_name(op.state):9}  "
              f"{short_enum(pb.TaskKind, op.task, 'TASK_KIND_').lower():18}  "
              f"{short_enum(pb.Provider, op.provider, 'PROVIDER_').lower():10}  {created}")
    return EXIT_OK


def cmd_cancel(client, args) -> int:
    print_operation(client.cancel(args.operation, args.reason), args.json)
    return EXIT_OK


def cmd_quota(client, args) -> int:
    report = client.quota(args.provider)
    if args.json:
        emit_json(to_dict(report))
        return EXIT_OK
    for q in report.provider_quotas:
        def figure(v):
            return "?" if v < 0 else str(v)
        print(f"{short_enum(pb.Provider, q.provider, 'PROVIDER_').lower():10}  {q.account:20}  "
              f"{q.resource:24}  {figure(q.remaining)} left of {figure(q.limit)}"
              + ("  EXHAUSTED" if q.exhausted else ""))
    for b in report.tenant_budgets:
        print(f"budget  {b.budget:30}  {b.remaining} left of {b.limit} "
              f"(used {b.used}, reserved {b.reserved})")
    return EXIT_OK


def cmd_providers(client, args) -> int:
    response = client.providers()
    if args.json:
        emit_json(to_dict(response))
        return EXIT_OK
    for p in response.providers:
        health = short_enum(pb.ProviderHealth, p.health, "PROVIDER_HEALTH_").lower()
        tasks = ", ".join(short_enum(pb.TaskKind, t.task, "TASK_KIND_").lower() for t in p.tasks)
        print(f"{short_enum(pb.Provider, p.provider, 'PROVIDER_').lower():10}  {p.account:20}  "
              f"{p.dialect:14}  {health}" + (f" ({p.health_detail})" if p.health_detail else ""))
        print(f"  tasks: {tasks}")
    return EXIT_OK


# -- main ----------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="musicgw-cli", description="The musicgw gateway from a shell.",
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", help="host:port (env MUSICGW_TARGET)")
    ap.add_argument("--api-key", help="tenant API key (env MUSICGW_API_KEY; prefer the env or config)")
    ap.add_argument("--config", help="config file (env MUSICGW_CONFIG)")
    ap.add_argument("--profile", default="default", help="config section")
    tls = ap.add_mutually_exclusive_group()
    tls.add_argument("--tls", dest="tls", action="store_true", default=None,
                     help="use TLS (default: TLS unless the target is loopback)")
    tls.add_argument("--plaintext", dest="tls", action="store_false", help="no TLS")
    ap.add_argument("--ca-cert", help="PEM file of roots to trust (env MUSICGW_CA_CERT)")
    ap.add_argument("--server-name", help="name to check the server certificate against")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per unary call")
    ap.add_argument("--json", action="store_true", help="machine-readable output (JSON lines)")
    ap.add_argument("--version", action="version", version=f"musicgw-cli {musicgw.__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    provider = enum_arg(pb.Provider, "PROVIDER_")

    # The options every task kind takes, after the kind: generate sample --prompt .. --watch.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--provider", type=provider, help="loudly or soundpiece (default: routed)")
    common.add_argument("--fallback", action="store_true", help="allow the other provider")
    common.add_argument("--validate-only", action="store_true", help="check the request only")
    common.add_argument("--request-id", help="idempotency key (default: a new UUID)")
    common.add_argument("--watch", action="store_true", help="follow it to the end")
    common.add_argument("--wait", action="store_true", help="block until it is done")
    common.add_argument("--wait-timeout", type=float, default=600.0)
    common.add_argument("--download", metavar="DIR", help="follow it, then download every output")
    p = sub.add_parser("generate", help="start a generation (one sub-command per task kind)")
    add_task_parsers(p.add_subparsers(dest="task_kind", required=True, metavar="KIND"), common)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("watch", help="follow an operation with a live status line")
    p.add_argument("operation")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("wait", help="block until an operation is done")
    p.add_argument("operation")
    p.add_argument("--wait-timeout", type=float, default=600.0)
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("get", help="show an operation")
    p.add_argument("operation")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("download", help="download an asset, or every output of an operation")
    p.add_argument("ref", help="operations/ID/assets/N, or operations/ID for all outputs")
    p.add_argument("-o", "--output", help="file or directory (default: .)")
    p.add_argument("--restart", action="store_true", help="discard a partial file instead of resuming")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("list", help="list your operations, newest first")
    p.add_argument("--state", action="append", default=[],
                   type=enum_arg(pb.OperationState, "OPERATION_STATE_"), help="repeatable")
    p.add_argument("--provider", type=provider)
    p.add_argument("--task", type=enum_arg(pb.TaskKind, "TASK_KIND_"))
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("cancel", help="cancel an operation")
    p.add_argument("operation")
    p.add_argument("--reason", default="")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("quota", help="provider quota and your budgets")
    p.add_argument("--provider", type=provider)
    p.set_defaults(func=cmd_quota)

    p = sub.add_parser("providers", help="configured providers, their tasks and health")
    p.set_defaults(func=cmd_providers)
    return ap


def report_error(err: errors.MusicgwError, as_json: bool) -> None:
    if as_json:
        emit_json({"error": {
            "code": err.code.name, "message": err.message, "reason": err.reason,
            "domain": err.error_info.domain if err.error_info else "",
            "metadata": dict(err.error_info.metadata) if err.error_info else {},
            "field_violations": err.field_violations, "retry_delay_seconds": err.retry_delay,
            "quota_violations": [to_dict(v) for v in err.quota_failure.violations]
            if err.quota_failure else []}})
        return
    print(f"musicgw-cli: {err}", file=sys.stderr)
    for field, description in err.field_violations.items():
        print(f"  {field}: {description}", file=sys.stderr)
    if err.retry_delay is not None:
        print(f"  retry after {err.retry_delay:.0f}s", file=sys.stderr)
    if err.quota_failure:
        for v in err.quota_failure.violations:
            print(f"  quota {v.subject}: {v.description}", file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        with make_client(args) as client:
            return args.func(client, args)
    except UsageError as err:
        if args.json:
            emit_json({"error": {"code": "USAGE", "message": str(err)}})
        print(f"musicgw-cli: {err}", file=sys.stderr)
        return EXIT_USAGE
    except errors.MusicgwError as err:
        report_error(err, args.json)
        return _EXIT_BY_CODE.get(err.code, EXIT_OTHER)
    except KeyboardInterrupt:
        return 130
    except OSError as err:
        print(f"musicgw-cli: {err}", file=sys.stderr)
        return EXIT_OTHER


if __name__ == "__main__":
    sys.exit(main())
