"""musicgw: the Python SDK of the musicgw music generation gateway.

    import musicgw
    with musicgw.Client("127.0.0.1:50051", api_key) as client:
        op = client.generate(musicgw.SampleTask(prompt="vinyl drum loop", duration_seconds=8))
        for event in client.watch(op):
            print(musicgw.state_name(event.operation.state))
        done = client.wait(op)
        client.download(done.outputs[0], "loop.flac")
"""

from musicgw._proto.musicgw.v1 import musicgw_pb2 as types
from musicgw._proto.musicgw.v1.musicgw_pb2 import (
    Asset,
    AssetInfo,
    AudioSource,
    CutDownTask,
    GenerateRequest,
    InstrumentalTask,
    Operation,
    OperationEvent,
    ParametricMusicTask,
    RemixInstrumentalTask,
    RemixSongTask,
    SampleTask,
    SeparateStemsTask,
    SongTask,
    SoundEffectTask,
    TextToMusicTask,
)
from musicgw.client import Client, DownloadResult, file_sha256, provider_value
from musicgw.errors import (
    AlreadyExistsError,
    BadRequest,
    CancelledError,
    ChecksumMismatchError,
    DeadlineExceededError,
    ErrorInfo,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    MusicgwError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    QuotaFailure,
    ResourceExhaustedError,
    RetryInfo,
    UnauthenticatedError,
    UnavailableError,
)

__version__ = "0.1.0"


def state_name(state: int) -> str:
    """"RUNNING" for OPERATION_STATE_RUNNING, and so on."""
    return types.OperationState.Name(state).removeprefix("OPERATION_STATE_")


__all__ = [name for name in dir() if not name.startswith("_")]
