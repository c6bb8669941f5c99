#!/usr/bin/env python3
"""musicgw Python demo and end-to-end check: a Soundpiece sample and a Loudly track, each watched
(with a dropped and resumed stream) and downloaded (with an interrupted and resumed download),
then a request the gateway rejects, with its BadRequest decoded.

  MUSICGW_TARGET=127.0.0.1:50051 MUSICGW_API_KEY=... demo.py --out-dir /tmp/musicgw-py

Exits non-zero on any failure.
"""

import argparse
import os
import sys

import grpc

from google.rpc import error_details_pb2
from musicgw.v1 import musicgw_pb2 as pb

import musicgw_client


def state_name(state):
    return pb.OperationState.Name(state)


def print_event(label):
    def show(event):
        if event.kind == pb.OperationEvent.KIND_HEARTBEAT:
            print(f"  [{label}] heartbeat seq={event.sequence}")
        else:
            print(
                f"  [{label}] {pb.OperationEvent.Kind.Name(event.kind)} seq={event.sequence} "
                f"state={state_name(event.operation.state)}"
            )

    return show


def check_idempotency(client, request, op):
    """The same request_id and request: the same operation. A different request: REQUEST_ID_REUSED."""
    again = client.generate(request)
    if again.name != op.name:
        raise RuntimeError(f"retry with the same request_id gave {again.name}, not {op.name}")
    changed = pb.GenerateRequest()
    changed.CopyFrom(request)
    changed.sample.prompt += " (changed)"
    try:
        client.generate(changed)
    except grpc.RpcError as err:
        reasons = [d.reason for d in musicgw_client.error_details(err)
                   if isinstance(d, error_details_pb2.ErrorInfo)]
        if err.code() != grpc.StatusCode.ALREADY_EXISTS or reasons != ["REQUEST_ID_REUSED"]:
            raise
        print(f"  retry -> same operation; same request_id, other request -> "
              f"{err.code().name} {reasons[0]}")
        return
    raise RuntimeError("a reused request_id with a different request was accepted")


def run_job(client, label, request, out_dir):
    op = client.generate(request)
    print(f"[{label}] Generate request_id={request.request_id} -> {op.name} {state_name(op.state)}")
    if request.WhichOneof("task") == "sample":
        check_idempotency(client, request, op)

    # Simulate a dropped connection: read one event, cancel the stream, then resume after it.
    stream = client.watch_once(op.name)
    first = next(stream)
    print_event(label)(first)
    stream.cancel()
    print(f"  [{label}] watch dropped after seq={first.sequence}; resuming")
    if first.operation.done:
        op = first.operation
    else:
        op = client.watch(op.name, after_sequence=first.sequence, on_event=print_event(label))
    if op.state != pb.OPERATION_STATE_SUCCEEDED:
        raise RuntimeError(f"[{label}] ended {state_name(op.state)}: {op.error.message}")
    if not op.outputs:
        raise RuntimeError(f"[{label}] succeeded without outputs")

    asset = op.outputs[0]
    path = os.path.join(out_dir, f"{label}-{asset.name.replace('/', '_')}")
    if os.path.exists(path):
        os.remove(path)
    client.download(asset.name, path, stop_after_chunks=1)
    partial = os.path.getsize(path)
    print(f"  [{label}] download interrupted after the first chunk at {partial} bytes; resuming")
    info = client.download(asset.name, path)
    sha256 = info.sha256
    if not sha256:
        # The gateway learns an asset's digest from a download that streams every byte in one
        # pass, which an interrupted one is not. Take one clean pass, then the digest is known.
        full = path + ".full"
        if os.path.exists(full):
            os.remove(full)
        client.download(asset.name, full)
        sha256 = client.get_operation(op.name).outputs[0].sha256 or musicgw_client.file_sha256(full)
        musicgw_client.verify(path, pb.AssetInfo(sha256=sha256))
    print(
        f"  [{label}] saved {path}: {os.path.getsize(path)} bytes, {info.content_type}, "
        f"sha256 verified {sha256}"
    )


def check_invalid_argument(client):
    request = pb.GenerateRequest(provider=pb.PROVIDER_SOUNDPIECE)
    request.sample.prompt = "too long a sample"
    request.sample.duration_seconds = 999
    try:
        client.generate(request)
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.INVALID_ARGUMENT:
            raise
        print(f"[invalid] {err.code().name}: {err.details()}")
        fields = []
        for detail in musicgw_client.error_details(err):
            if isinstance(detail, error_details_pb2.BadRequest):
                for violation in detail.field_violations:
                    print(f"  BadRequest {violation.field}: {violation.description}")
                    fields.append(violation.field)
            elif isinstance(detail, error_details_pb2.ErrorInfo):
                print(f"  ErrorInfo reason={detail.reason} domain={detail.domain}")
        if "sample.duration_seconds" not in fields:
            raise RuntimeError(f"expected a violation of sample.duration_seconds, got {fields}")
        return
    raise RuntimeError("sample.duration_seconds = 999 was accepted")


def run_through_flaky_network(direct, flaky, out_dir):
    """Generate, Watch and Download through a path that drops connections mid-stream: the
    client library retries Generate with the same request_id, reopens the Watch after the last
    sequence and resumes the Download from the file's size, on its own."""
    request = pb.GenerateRequest(provider=pb.PROVIDER_LOUDLY)
    request.parametric_music.genre = "House"
    request.parametric_music.duration_seconds = 30
    op = flaky.generate(request)
    print(f"[flaky] Generate -> {op.name}")
    seen = []

    def on_event(event):
        if event.kind != pb.OperationEvent.KIND_HEARTBEAT:
            if seen and event.sequence <= seen[-1]:
                raise RuntimeError(f"sequence went back from {seen[-1]} to {event.sequence}")
            seen.append(event.sequence)
        print_event("flaky")(event)

    retries = []

    def on_retry(what):
        def note(err, position):
            retries.append(what)
            print(f"  [flaky] {what} lost ({err.code().name}); resuming after {position}")
        return note

    op = flaky.watch(op.name, on_event=on_event, on_retry=on_retry("watch"))
    if op.state != pb.OPERATION_STATE_SUCCEEDED:
        raise RuntimeError(f"[flaky] ended {state_name(op.state)}: {op.error.message}")
    path = os.path.join(out_dir, "flaky-download")
    if os.path.exists(path):
        os.remove(path)
    flaky.download(op.outputs[0].name, path, on_retry=on_retry("download"))
    reference = path + ".direct"
    if os.path.exists(reference):
        os.remove(reference)
    direct.download(op.outputs[0].name, reference)
    if musicgw_client.file_sha256(path) != musicgw_client.file_sha256(reference):
        raise RuntimeError("the download resumed through drops differs from a direct one")
    if not retries:
        raise RuntimeError("no stream was cut: the resumption went untested")
    print(f"  [flaky] downloaded {os.path.getsize(path)} bytes through {len(retries)} drops; "
          "identical to a direct download")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=os.environ.get("MUSICGW_TARGET", "127.0.0.1:50051"))
    parser.add_argument("--out-dir", default=".")
    parser.add_argument("--tls", action="store_true", help="TLS (default: only off loopback)")
    parser.add_argument("--flaky-target", help="the gateway through a connection-dropping proxy")
    args = parser.parse_args()
    api_key = os.environ.get("MUSICGW_API_KEY")
    if not api_key:
        print("set MUSICGW_API_KEY to your musicgw API key", file=sys.stderr)
        return 2
    os.makedirs(args.out_dir, exist_ok=True)
    client = musicgw_client.Client(args.target, api_key, tls=True if args.tls else None)
    try:
        sample = pb.GenerateRequest(provider=pb.PROVIDER_SOUNDPIECE)
        sample.sample.prompt = "dusty vinyl drum loop, 90 bpm"
        sample.sample.duration_seconds = 8
        sample.sample.loopable = True
        run_job(client, "soundpiece", sample, args.out_dir)

        track = pb.GenerateRequest(provider=pb.PROVIDER_LOUDLY)
        track.parametric_music.genre = "House"
        track.parametric_music.duration_seconds = 30
        track.parametric_music.energy = pb.ENERGY_HIGH
        run_job(client, "loudly", track, args.out_dir)

        check_invalid_argument(client)

        if args.flaky_target:
            flaky = musicgw_client.Client(args.flaky_target, api_key, tls=False)
            try:
                run_through_flaky_network(client, flaky, args.out_dir)
            finally:
                flaky.close()
    except (grpc.RpcError, RuntimeError, ValueError, TimeoutError) as err:
        if isinstance(err, grpc.RpcError):
            print(f"FAILED: {err.code().name}: {err.details()}", file=sys.stderr)
            for detail in musicgw_client.error_details(err):
                print(f"  {type(detail).__name__}: {detail}", file=sys.stderr)
        else:
            print(f"FAILED: {err}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print("python client: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
