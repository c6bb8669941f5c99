"""Typed errors. Every failed call raises a subclass of MusicgwError that carries the gRPC code
and the rich details the gateway puts in the grpc-status-details-bin trailer (AIP-193)."""

from __future__ import annotations

from typing import Dict, List, Optional, Type

import grpc

from musicgw._proto.google.rpc import error_details_pb2, status_pb2

ErrorInfo = error_details_pb2.ErrorInfo
RetryInfo = error_details_pb2.RetryInfo
QuotaFailure = error_details_pb2.QuotaFailure
BadRequest = error_details_pb2.BadRequest

_DETAIL_TYPES = {t.DESCRIPTOR.full_name: t for t in (ErrorInfo, RetryInfo, QuotaFailure, BadRequest)}
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class MusicgwError(Exception):
    """A failed call. `code` is the grpc.StatusCode; the detail attributes are None when the
    gateway did not send that detail."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None,
                 details: Optional[List[object]] = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details: List[object] = list(details or [])
        self.error_info: Optional[ErrorInfo] = self._first(ErrorInfo)
        self.retry_info: Optional[RetryInfo] = self._first(RetryInfo)
        self.quota_failure: Optional[QuotaFailure] = self._first(QuotaFailure)
        self.bad_request: Optional[BadRequest] = self._first(BadRequest)

    def _first(self, kind):
        return next((d for d in self.details if isinstance(d, kind)), None)

    @property
    def reason(self) -> str:
        """ErrorInfo.reason, e.g. "REQUEST_ID_REUSED"; empty when there is no ErrorInfo."""
        return self.error_info.reason if self.error_info else ""

    @property
    def retry_delay(self) -> Optional[float]:
        """RetryInfo's delay in seconds, when the gateway sent one."""
        if self.retry_info is None or not self.retry_info.HasField("retry_delay"):
            return None
        return self.retry_info.retry_delay.ToTimedelta().total_seconds()

    @property
    def field_violations(self) -> Dict[str, str]:
        """BadRequest as {field: description}."""
        if self.bad_request is None:
            return {}
        return {v.field: v.description for v in self.bad_request.field_violations}

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        if self.reason:
            text += f" [{self.reason}]"
        return text


class InvalidArgumentError(MusicgwError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(MusicgwError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(MusicgwError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDeniedError(MusicgwError):
    code = grpc.StatusCode.PERMISSION_DENIED


class UnauthenticatedError(MusicgwError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhaustedError(MusicgwError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(MusicgwError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRangeError(MusicgwError):
    code = grpc.StatusCode.OUT_OF_RANGE


class UnavailableError(MusicgwError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(MusicgwError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class CancelledError(MusicgwError):
    code = grpc.StatusCode.CANCELLED


class InternalError(MusicgwError):
    code = grpc.StatusCode.INTERNAL


class ChecksumMismatchError(MusicgwError):
    """A downloaded file does not match the size or SHA-256 the gateway reported."""

    code = grpc.StatusCode.DATA_LOSS


_BY_CODE: Dict[grpc.StatusCode, Type[MusicgwError]] = {
    cls.code: cls
    for cls in (InvalidArgumentError, NotFoundError, AlreadyExistsError, PermissionDeniedError,
                UnauthenticatedError, ResourceExhaustedError, FailedPreconditionError,
                OutOfRangeError, UnavailableError, DeadlineExceededError, CancelledError,
                InternalError)
}


def decode_details(err: grpc.RpcError) -> List[object]:
    """The ErrorInfo / RetryInfo / QuotaFailure / BadRequest messages of a failed call."""
    details: List[object] = []
    trailers = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in trailers or ():
        if key != _STATUS_DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        for any_detail in status.details:
            kind = _DETAIL_TYPES.get(any_detail.TypeName())
            if kind is not None:
                message = kind()
                any_detail.Unpack(message)
                details.append(message)
    return details


def from_rpc_error(err: grpc.RpcError) -> MusicgwError:
    """The typed error for a grpc.RpcError."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = err.details() if hasattr(err, "details") else str(err)
    cls = _BY_CODE.get(code, MusicgwError)
    error = cls(message or code.name, code=code, details=decode_details(err))
    error.__cause__ = err
    return error
