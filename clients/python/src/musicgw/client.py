"""The musicgw client: one channel to the gateway, authenticated with one tenant API key."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import grpc

from musicgw import errors
from musicgw._proto.musicgw.v1 import musicgw_pb2 as pb
from musicgw._proto.musicgw.v1 import musicgw_pb2_grpc as pb_grpc

# The server answers pings at most every 10 s (keepalive_min_ping_interval) and sends GOAWAY
# "too_many_pings" after 2 strikes; pinging every 30 s keeps NATs and load balancers from
# dropping a long Watch, well inside that.
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

# Codes after which the same call may be repeated: the connection dropped, or the server asked.
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)

Task = Union[pb.ParametricMusicTask, pb.TextToMusicTask, pb.SongTask, pb.InstrumentalTask,
             pb.SampleTask, pb.SoundEffectTask, pb.RemixSongTask, pb.RemixInstrumentalTask,
             pb.SeparateStemsTask, pb.CutDownTask]
_TASK_FIELDS = {
    field.message_type.full_name: field.name
    for field in pb.GenerateRequest.DESCRIPTOR.oneofs_by_name["task"].fields
}
OperationRef = Union[str, pb.Operation]
AssetRef = Union[str, pb.Asset]

_PROVIDERS = {"loudly": pb.PROVIDER_LOUDLY, "soundpiece": pb.PROVIDER_SOUNDPIECE}


def provider_value(provider: Union[None, str, int]) -> int:
    """A Provider enum value from None, "loudly", "soundpiece", "PROVIDER_LOUDLY" or the value."""
    if provider is None:
        return pb.PROVIDER_UNSPECIFIED
    if isinstance(provider, int):
        return provider
    key = provider.lower().removeprefix("provider_")
    if key not in _PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}: one of {', '.join(_PROVIDERS)}")
    return _PROVIDERS[key]


def _is_loopback(target: str) -> bool:
    host = target.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _name(ref: Union[OperationRef, AssetRef]) -> str:
    return ref if isinstance(ref, str) else ref.name


def _backoff(err: errors.MusicgwError, attempt: int) -> float:
    """RetryInfo's delay when the server gave one, else exponential backoff from 0.2 s."""
    delay = err.retry_delay
    return delay if delay is not None else min(0.2 * (2**attempt), 5.0)


@dataclass
class DownloadResult:
    """What download() wrote."""

    path: str
    size: int
    sha256: str
    content_type: str
    # The offset this call started at (non-zero when it resumed a partial file).
    started_at: int
    # How many times a dropped stream was resumed.
    resumptions: int
    # True when the file's SHA-256 was checked against an independent digest.
    verified: bool
    # Where that digest came from: "gateway" (AssetInfo or the operation's asset) or "restream"
    # (the gateway did not know it yet, so the asset was streamed once more and hashed).
    digest_source: str


class Client:
    """A musicgw client.

    target: "host:port". api_key: the tenant key, sent as `authorization: Bearer <key>`.
    tls: True, False, or None for "TLS unless the target is loopback". root_certificates: PEM
    bytes or a path to a PEM file to trust instead of the system roots. server_name: the name to
    check the server certificate against, when it differs from the target's host.
    """

    def __init__(self, target: str, api_key: str, *, tls: Optional[bool] = None,
                 root_certificates: Union[None, bytes, str] = None,
                 server_name: Optional[str] = None, timeout: float = 30.0,
                 options: Sequence[tuple] = ()):
        if not api_key:
            raise ValueError("an API key is required")
        if tls is None:
            tls = not _is_loopback(target)
        channel_options = list(KEEPALIVE_OPTIONS) + list(options)
        if server_name:
            channel_options.append(("grpc.ssl_target_name_override", server_name))
        if tls:
            if isinstance(root_certificates, str):
                with open(root_certificates, "rb") as f:
                    root_certificates = f.read()
            # Call credentials: gRPC adds the key to every call and refuses plaintext with it.
            creds = grpc.composite_channel_credentials(
                grpc.ssl_channel_credentials(root_certificates),
                grpc.access_token_call_credentials(api_key))
            self._channel = grpc.secure_channel(target, creds, options=channel_options)
            self._metadata: tuple = ()
        else:
            # Plaintext (loopback, or a mesh that does TLS): the key as per-call metadata.
            self._channel = grpc.insecure_channel(target, options=channel_options)
            self._metadata = (("authorization", "Bearer " + api_key),)
        self.target = target
        self.timeout = timeout
        self.stub = pb_grpc.MusicGatewayStub(self._channel)

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request, timeout=None, attempts=1):
        """One unary call, repeated on UNAVAILABLE / RESOURCE_EXHAUSTED up to attempts times."""
        for attempt in range(attempts):
            try:
                return method(request, metadata=self._metadata,
                              timeout=self.timeout if timeout is None else timeout)
            except grpc.RpcError as rpc_error:
                err = errors.from_rpc_error(rpc_error)
                if err.code not in _RETRYABLE or attempt + 1 >= attempts:
                    raise err from None
                time.sleep(_backoff(err, attempt))
        raise AssertionError("unreachable")

    # -- generation -----------------------------------------------------------------------
    def generate(self, task: Union[Task, pb.GenerateRequest], *,
                 provider: Union[None, str, int] = None, allow_fallback: bool = False,
                 validate_only: bool = False, request_id: Optional[str] = None,
                 timeout: Optional[float] = None, attempts: int = 3) -> pb.Operation:
        """Starts a generation and returns its Operation at once (state QUEUED).

        task is one of the task messages (SampleTask, ParametricMusicTask, ...) or a whole
        GenerateRequest. A request_id (UUID) is made when none is given; it is what makes the
        automatic retries after a dropped connection safe: the gateway returns the same
        operation and never charges twice.
        """
        if isinstance(task, pb.GenerateRequest):
            request = pb.GenerateRequest()
            request.CopyFrom(task)
        else:
            field = _TASK_FIELDS.get(task.DESCRIPTOR.full_name)
            if field is None:
                raise TypeError(f"{type(task).__name__} is not a musicgw task message")
            request = pb.GenerateRequest(provider=provider_value(provider),
                                         allow_fallback=allow_fallback,
                                         validate_only=validate_only)
            getattr(request, field).CopyFrom(task)
        if request_id:
            request.request_id = request_id
        if not request.request_id:
            request.request_id = str(uuid.uuid4())
        return self._call(self.stub.Generate, request, timeout, attempts)

    def get(self, operation: OperationRef, *, timeout: Optional[float] = None) -> pb.Operation:
        """The latest snapshot of an operation."""
        return self._call(self.stub.GetOperation,
                          pb.GetOperationRequest(name=_name(operation)), timeout, 3)

    def list(self, *, states: Iterable[int] = (), provider: Union[None, str, int] = None,
             task: int = pb.TASK_KIND_UNSPECIFIED, page_size: int = 50,
             limit: Optional[int] = None) -> Iterator[pb.Operation]:
        """The caller's operations, newest first, fetching pages as the iteration goes."""
        request = pb.ListOperationsRequest(page_size=page_size, states=list(states),
                                           provider=provider_value(provider), task=task)
        seen = 0
        while True:
            page = self._call(self.stub.ListOperations, request, None, 3)
            for op in page.operations:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield op
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def cancel(self, operation: OperationRef, reason: str = "",
               *, timeout: Optional[float] = None) -> pb.Operation:
        """Cancels an operation (best effort); FailedPreconditionError when it is already done."""
        return self._call(self.stub.CancelOperation,
                          pb.CancelOperationRequest(name=_name(operation), reason=reason),
                          timeout, 3)

    def wait(self, operation: OperationRef, *, timeout: Optional[float] = 600.0,
             poll: float = 60.0) -> pb.Operation:
        """Blocks until the operation is done and returns it. Raises DeadlineExceededError when
        it is not done after timeout seconds (None: wait as long as it takes). Dropped
        connections are retried."""
        name = _name(operation)
        deadline = None if timeout is None else time.monotonic() + timeout
        failures = 0
        while True:
            step = poll if deadline is None else min(poll, deadline - time.monotonic())
            if step <= 0:
                raise errors.DeadlineExceededError(f"{name} not done after {timeout} s")
            request = pb.WaitOperationRequest(name=name)
            request.timeout.FromMilliseconds(int(step * 1000))
            try:
                op = self.stub.WaitOperation(request, metadata=self._metadata, timeout=step + 10)
            except grpc.RpcError as rpc_error:
                err = errors.from_rpc_error(rpc_error)
                failures += 1
                if err.code not in _RETRYABLE or failures > 8:
                    raise err from None
                time.sleep(_backoff(err, failures - 1))
                continue
            failures = 0
            if op.done:
                return op

    def watch(self, operation: OperationRef, *, after_sequence: int = 0,
              heartbeats: bool = False, reconnects: int = 8,
              on_reconnect: Optional[Callable[[errors.MusicgwError, int], None]] = None
              ) -> Iterator[pb.OperationEvent]:
        """Yields the operation's events until it is done: first a snapshot, then each change.

        A dropped stream is reopened with after_sequence = the last sequence seen, so no change
        is missed or repeated; on_reconnect(error, last_sequence) is called before each
        reconnection. Heartbeats are yielded only with heartbeats=True.
        """
        name = _name(operation)
        last = after_sequence
        failures = 0
        while True:
            call = self.stub.WatchOperation(
                pb.WatchOperationRequest(name=name, after_sequence=last), metadata=self._metadata)
            try:
                for event in call:
                    failures = 0
                    if event.kind == pb.OperationEvent.KIND_HEARTBEAT:
                        if heartbeats:
                            yield event
                        continue
                    last = event.sequence
                    yield event
                    if event.operation.done:
                        return
                # The stream ends OK only after the done event; ending earlier means a proxy or
                # a draining server closed it: resume.
                err: errors.MusicgwError = errors.UnavailableError("the watch stream ended early")
            except grpc.RpcError as rpc_error:
                err = errors.from_rpc_error(rpc_error)
                if err.code not in _RETRYABLE:
                    raise err from None
            finally:
                call.cancel()
            failures += 1
            if failures > reconnects:
                raise err
            if on_reconnect is not None:
                on_reconnect(err, last)
            time.sleep(_backoff(err, failures - 1))

    # -- audio ----------------------------------------------------------------------------
    def download(self, asset: AssetRef, path: str, *, resume: bool = True, verify: bool = True,
                 attempts: int = 8, chunk_limit: Optional[int] = None,
                 on_progress: Optional[Callable[[int, int], None]] = None,
                 on_resume: Optional[Callable[[errors.MusicgwError, int], None]] = None
                 ) -> Optional[DownloadResult]:
        """Downloads an asset ("operations/{id}/assets/{n}" or an Asset) to path.

        With resume, bytes already in path are kept and the download continues at their end; a
        stream that drops is resumed the same way, up to attempts times. on_progress(bytes,
        total) follows it (total 0 when unknown). With verify, the finished file is checked
        against the SHA-256 the gateway reports (and its size); when the gateway does not know
        the digest yet (it learns it from one uninterrupted pass), the asset is streamed once
        more and hashed, so a resumed file is never taken on trust. ChecksumMismatchError when
        they differ. chunk_limit stops after that many data chunks and returns None (to
        interrupt a download on purpose).
        """
        name = _name(asset)
        if not resume and os.path.exists(path):
            os.remove(path)
        started_at = os.path.getsize(path) if os.path.exists(path) else 0
        info: Optional[pb.AssetInfo] = None
        resumptions = 0
        chunks = 0
        while True:
            offset = os.path.getsize(path) if os.path.exists(path) else 0
            if info is not None and 0 < info.size_bytes <= offset:
                break  # Complete: asking at offset == size is pointless.
            call = self.stub.Download(pb.DownloadRequest(asset=name, offset=offset),
                                      metadata=self._metadata)
            try:
                with open(path, "ab") as out:
                    for chunk in call:
                        if chunk.WhichOneof("payload") == "info":
                            sha_known = info.sha256 if info is not None else ""
                            info = chunk.info
                            if not info.sha256 and sha_known:
                                info.sha256 = sha_known
                            if info.offset != offset:
                                raise errors.ChecksumMismatchError(
                                    f"asked for offset {offset}, the gateway sent {info.offset}")
                            continue
                        if chunk.offset != out.tell():
                            raise errors.ChecksumMismatchError(
                                f"chunk at {chunk.offset}, file at {out.tell()}")
                        out.write(chunk.data)
                        chunks += 1
                        if on_progress is not None:
                            on_progress(out.tell(), info.size_bytes if info else 0)
                        if chunk_limit is not None and chunks >= chunk_limit:
                            return None
                break
            except grpc.RpcError as rpc_error:
                err = errors.from_rpc_error(rpc_error)
                resumptions += 1
                if err.code not in _RETRYABLE or resumptions >= attempts:
                    raise err from None
                if on_resume is not None:
                    on_resume(err, os.path.getsize(path))
                time.sleep(_backoff(err, resumptions - 1))
            finally:
                call.cancel()
        size = os.path.getsize(path)
        if info is None:
            raise errors.ChecksumMismatchError(f"{name}: the gateway sent no asset info")
        if info.size_bytes and size != info.size_bytes:
            raise errors.ChecksumMismatchError(f"{path}: {size} bytes, expected {info.size_bytes}")
        digest = file_sha256(path)
        verified, source = False, ""
        if verify:
            expected, source = info.sha256, "gateway"
            if not expected:
                expected, source = self._asset_sha256(name), "gateway"
            if not expected:
                expected, source = self._restream_sha256(name), "restream"
            if digest != expected:
                raise errors.ChecksumMismatchError(
                    f"{path}: sha256 {digest}, expected {expected} ({source})")
            verified = True
        return DownloadResult(path=path, size=size, sha256=digest, content_type=info.content_type,
                              started_at=started_at, resumptions=resumptions, verified=verified,
                              digest_source=source)

    def _asset_sha256(self, asset_name: str) -> str:
        op = self.get(asset_name.split("/assets/")[0])
        return next((a.sha256 for a in op.outputs if a.name == asset_name), "")

    def _restream_sha256(self, asset_name: str) -> str:
        digest = hashlib.sha256()
        for attempt in range(4):
            digest = hashlib.sha256()
            try:
                for chunk in self.stub.Download(pb.DownloadRequest(asset=asset_name),
                                                metadata=self._metadata):
                    if chunk.WhichOneof("payload") == "data":
                        digest.update(chunk.data)
                return digest.hexdigest()
            except grpc.RpcError as rpc_error:
                err = errors.from_rpc_error(rpc_error)
                if err.code not in _RETRYABLE or attempt == 3:
                    raise err from None
                time.sleep(_backoff(err, attempt))
        return digest.hexdigest()

    # -- account --------------------------------------------------------------------------
    def quota(self, provider: Union[None, str, int] = None) -> pb.QuotaReport:
        """Provider quota per account and resource, and the caller's own budgets."""
        return self._call(self.stub.GetQuota,
                          pb.GetQuotaRequest(provider=provider_value(provider)), None, 3)

    def providers(self) -> pb.ListProvidersResponse:
        """The configured providers with their tasks, parameter ranges and health."""
        return self._call(self.stub.ListProviders, pb.ListProvidersRequest(), None, 3)


def file_sha256(path: str) -> str:
    """Lower-case hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
