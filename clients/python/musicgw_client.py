"""A small musicgw client: API key auth, idempotent Generate, resumable Watch and Download, and
the rich error details the gateway attaches to failures.

The generated modules (musicgw.v1, google.rpc) must be on sys.path; generate.sh writes them.
"""

import hashlib
import ipaddress
import os
import time
import uuid

import grpc

from google.rpc import error_details_pb2, status_pb2
from musicgw.v1 import musicgw_pb2 as pb
from musicgw.v1 import musicgw_pb2_grpc as pb_grpc

# The server answers pings at most every 10 s (keepalive_min_ping_interval) and closes the
# connection with GOAWAY "too_many_pings" after 2 strikes; it also pings idle clients every 60 s.
# Pinging every 30 s keeps NATs and load balancers from dropping a long Watch, well inside that.
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

# Codes after which the same call may be repeated: the connection dropped, or the server asked.
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)

STATUS_DETAILS_KEY = "grpc-status-details-bin"
DETAIL_TYPES = {
    t.DESCRIPTOR.full_name: t
    for t in (
        error_details_pb2.ErrorInfo,
        error_details_pb2.RetryInfo,
        error_details_pb2.QuotaFailure,
        error_details_pb2.BadRequest,
    )
}


def _is_loopback(target):
    host = target.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Client:
    """One channel to the gateway, authenticated with one tenant API key."""

    def __init__(self, target, api_key, tls=None, root_certificates=None):
        if tls is None:
            tls = not _is_loopback(target)
        if tls:
            # Call credentials: gRPC adds `authorization: Bearer <key>` to every call, and
            # refuses to send it over plaintext.
            creds = grpc.composite_channel_credentials(
                grpc.ssl_channel_credentials(root_certificates),
                grpc.access_token_call_credentials(api_key),
            )
            self._channel = grpc.secure_channel(target, creds, options=KEEPALIVE_OPTIONS)
            self._metadata = ()
        else:
            # Plaintext (loopback sandbox, or inside a mesh that does TLS): per-call metadata.
            self._channel = grpc.insecure_channel(target, options=KEEPALIVE_OPTIONS)
            self._metadata = (("authorization", "Bearer " + api_key),)
        self.stub = pb_grpc.MusicGatewayStub(self._channel)

    def close(self):
        self._channel.close()

    def list_providers(self, timeout=10):
        return self.stub.ListProviders(
            pb.ListProvidersRequest(), metadata=self._metadata, timeout=timeout
        )

    def get_operation(self, name, timeout=10):
        return self.stub.GetOperation(
            pb.GetOperationRequest(name=name), metadata=self._metadata, timeout=timeout
        )

    def generate(self, request, timeout=30, attempts=3):
        """Starts a generation. The request_id makes retries safe: the gateway returns the same
        operation and never charges twice."""
        if not request.request_id:
            request.request_id = str(uuid.uuid4())
        for attempt in range(attempts):
            try:
                return self.stub.Generate(request, metadata=self._metadata, timeout=timeout)
            except grpc.RpcError as err:
                if err.code() not in RETRYABLE or attempt + 1 == attempts:
                    raise
                time.sleep(retry_delay(err, attempt))
        raise AssertionError("unreachable")

    def watch_once(self, name, after_sequence=0, timeout=120):
        """One WatchOperation stream (an iterator of OperationEvent that can be cancel()led)."""
        return self.stub.WatchOperation(
            pb.WatchOperationRequest(name=name, after_sequence=after_sequence),
            metadata=self._metadata,
            timeout=timeout,
        )

    def watch(self, name, after_sequence=0, timeout=120, on_event=None, reconnects=5,
              on_retry=None):
        """Follows an operation until it is done and returns its last snapshot. A dropped stream
        is reopened with after_sequence = the last sequence seen, so no change is missed or
        repeated. on_retry(error, last_sequence) is called before each reconnection."""
        deadline = time.monotonic() + timeout
        last = after_sequence
        failures = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{name} not done after {timeout} s")
            try:
                for event in self.watch_once(name, last, remaining):
                    failures = 0
                    if on_event:
                        on_event(event)
                    if event.kind == pb.OperationEvent.KIND_HEARTBEAT:
                        continue
                    last = event.sequence
                    if event.operation.done:
                        return event.operation
                # The stream ends OK only after the done event; ending earlier means a proxy or
                # the server (draining) closed it: resume.
            except grpc.RpcError as err:
                failures += 1
                if err.code() not in RETRYABLE or failures > reconnects:
                    raise
                if on_retry:
                    on_retry(err, last)
                time.sleep(retry_delay(err, failures - 1))

    def download(self, asset, path, timeout=120, stop_after_chunks=None, attempts=5,
                 on_retry=None):
        """Downloads an asset to path, resuming from the bytes already there. Returns the last
        AssetInfo. With stop_after_chunks, cancels the stream after that many data chunks (to
        show an interruption) and returns None. on_retry(error, bytes_on_disk) is called before
        each resumption."""
        info = None
        for attempt in range(attempts):
            offset = os.path.getsize(path) if os.path.exists(path) else 0
            if info is not None and 0 < info.size_bytes == offset:
                break  # Complete; asking at offset == size is pointless.
            call = self.stub.Download(
                pb.DownloadRequest(asset=asset, offset=offset),
                metadata=self._metadata,
                timeout=timeout,
            )
            chunks = 0
            try:
                with open(path, "ab") as out:
                    for chunk in call:
                        if chunk.WhichOneof("payload") == "info":
                            info = chunk.info
                            if info.offset != offset:
                                raise ValueError(f"asked for offset {offset}, got {info.offset}")
                            continue
                        if chunk.offset != out.tell():
                            raise ValueError(f"chunk at {chunk.offset}, file at {out.tell()}")
                        out.write(chunk.data)
                        chunks += 1
                        if stop_after_chunks is not None and chunks >= stop_after_chunks:
                            call.cancel()
                            return None
                break
            except grpc.RpcError as err:
                if err.code() not in RETRYABLE or attempt + 1 == attempts:
                    raise
                if on_retry:
                    on_retry(err, os.path.getsize(path))
                time.sleep(retry_delay(err, attempt))
        verify(path, info)
        return info


def verify(path, info):
    """Checks a finished download against its AssetInfo: size when known, SHA-256 when known."""
    size = os.path.getsize(path)
    if size <= 0:
        raise ValueError(f"{path} is empty")
    if info is not None and info.size_bytes and size != info.size_bytes:
        raise ValueError(f"{path}: {size} bytes, expected {info.size_bytes}")
    if info is not None and info.sha256:
        digest = file_sha256(path)
        if digest != info.sha256:
            raise ValueError(f"{path}: sha256 {digest}, expected {info.sha256}")


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def error_details(err):
    """Decodes the google.rpc.Status in the grpc-status-details-bin trailer of a failed call into
    a list of ErrorInfo / RetryInfo / QuotaFailure / BadRequest messages."""
    details = []
    for key, value in err.trailing_metadata() or ():
        if key != STATUS_DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        for any_detail in status.details:
            type_name = any_detail.TypeName()
            if type_name in DETAIL_TYPES:
                message = DETAIL_TYPES[type_name]()
                any_detail.Unpack(message)
                details.append(message)
    return details


def retry_delay(err, attempt):
    """RetryInfo's delay when the server gave one, else exponential backoff from 0.2 s."""
    for detail in error_details(err):
        if isinstance(detail, error_details_pb2.RetryInfo):
            return detail.retry_delay.ToTimedelta().total_seconds()
    return min(0.2 * (2**attempt), 5.0)
