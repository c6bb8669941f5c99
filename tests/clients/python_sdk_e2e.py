#!/usr/bin/env python3
"""End-to-end test of the installed musicgw Python package against the sandbox.

  MUSICGW_TARGET=... MUSICGW_API_KEY=... python_sdk_e2e.py --flaky-target HOST:PORT --out-dir DIR

Generate (with an automatic request_id, and an idempotent retry), watch through a proxy that
cuts the connection (the iterator resumes by itself), download interrupted on purpose and
resumed, download through the proxy's cuts, verified by SHA-256, and typed errors carrying
ErrorInfo and BadRequest. Exits non-zero on the first failed check.
"""

import argparse
import os
import sys

import musicgw


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print(f"ok: {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flaky-target", required=True)
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    target, key = os.environ["MUSICGW_TARGET"], os.environ["MUSICGW_API_KEY"]
    check(musicgw.__file__.find("site-packages") > 0, f"musicgw imported from an install ({musicgw.__file__})")

    with musicgw.Client(target, key) as client:
        # generate: a request_id is made; the same request_id returns the same operation.
        op = client.generate(musicgw.SampleTask(prompt="dusty vinyl drum loop", duration_seconds=6,
                                                loopable=True), provider="soundpiece")
        check(op.name.startswith("operations/") and op.request.request_id,
              f"generate -> {op.name} with request_id {op.request.request_id}")
        again = client.generate(musicgw.SampleTask(prompt="dusty vinyl drum loop",
                                                   duration_seconds=6, loopable=True),
                                provider="soundpiece", request_id=op.request.request_id)
        check(again.name == op.name, "the same request_id gives the same operation")

        # Typed errors with rich details.
        try:
            client.generate(musicgw.SampleTask(prompt="x", duration_seconds=6),
                            provider="soundpiece", request_id=op.request.request_id)
            raise AssertionError("a reused request_id with another request was accepted")
        except musicgw.AlreadyExistsError as err:
            check(err.reason == "REQUEST_ID_REUSED" and err.error_info.domain,
                  f"AlreadyExistsError with ErrorInfo {err.reason}/{err.error_info.domain}")
        try:
            client.generate(musicgw.SampleTask(prompt="too long", duration_seconds=999))
            raise AssertionError("duration 999 was accepted")
        except musicgw.InvalidArgumentError as err:
            check("sample.duration_seconds" in err.field_violations,
                  f"InvalidArgumentError with BadRequest {err.field_violations}")
            check(isinstance(err, musicgw.MusicgwError) and err.error_info is not None,
                  "the error is a MusicgwError carrying ErrorInfo")
        try:
            client.get("operations/00000000000000000000000000")
            raise AssertionError("an unknown operation was found")
        except musicgw.NotFoundError as err:
            check(err.code.name == "NOT_FOUND", f"NotFoundError: {err}")

        # wait, then a download interrupted after one chunk and resumed from the file's size.
        done = client.wait(op, timeout=60)
        check(done.state == musicgw.types.OPERATION_STATE_SUCCEEDED and done.outputs,
              f"wait -> {musicgw.state_name(done.state)}")
        path = os.path.join(args.out_dir, "sample.flac")
        if os.path.exists(path):
            os.remove(path)
        check(client.download(done.outputs[0], path, chunk_limit=1) is None and os.path.getsize(path) > 0,
              f"download interrupted on purpose at {os.path.getsize(path)} bytes")
        result = client.download(done.outputs[0], path)
        check(result.started_at > 0 and result.verified and result.size == os.path.getsize(path),
              f"download resumed at {result.started_at}, {result.size} bytes, sha256 verified "
              f"({result.digest_source})")

    # Through the proxy that cuts connections: watch and download resume by themselves.
    with musicgw.Client(args.flaky_target, key, tls=False) as flaky:
        op = flaky.generate(musicgw.ParametricMusicTask(genre="House", duration_seconds=30),
                            provider="loudly")
        reconnects, sequences = [], []
        for event in flaky.watch(op, on_reconnect=lambda err, last: reconnects.append(last)):
            if sequences:
                check(event.sequence > sequences[-1], f"sequence {event.sequence} after {sequences[-1]}")
            sequences.append(event.sequence)
            print(f"  event seq={event.sequence} {musicgw.state_name(event.operation.state)}")
            last = event.operation
        check(last.done and last.state == musicgw.types.OPERATION_STATE_SUCCEEDED,
              "watch followed the operation to SUCCEEDED")
        check(len(reconnects) > 0, f"watch reconnected by itself {len(reconnects)} time(s)")
        path = os.path.join(args.out_dir, "track.mp3")
        if os.path.exists(path):
            os.remove(path)
        resumes = []
        result = flaky.download(last.outputs[0].name, path,
                                on_resume=lambda err, at: resumes.append(at))
        check(result.verified and result.size > 0,
              f"download through the proxy: {result.size} bytes, {result.resumptions} "
              f"resumption(s), sha256 verified ({result.digest_source})")
        print(f"  resumed at offsets {resumes}")
    print("python sdk: all checks passed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (AssertionError, musicgw.MusicgwError) as err:
        print(f"FAILED: {type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(1)
