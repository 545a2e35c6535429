"""The gRPC edge of the error model (fleetpulse/errors.py): which status code each class of error
ends a stream with, and the delay it asks for.

The same codes prefix the reason of an in-band refusal (``MetricAck.error``, "RESOURCE_EXHAUSTED:
..."), so an agent reads one vocabulary whether a batch was refused or the stream ended.
"""

from __future__ import annotations

import math

import grpc

from fleetpulse import errors

_CODES: tuple[tuple[type[errors.FleetpulseError], grpc.StatusCode], ...] = (
    (errors.BadInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.Forbidden, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Conflict, grpc.StatusCode.ALREADY_EXISTS),
    (errors.OutOfOrder, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.Superseded, grpc.StatusCode.ABORTED),
    (errors.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Timeout, grpc.StatusCode.DEADLINE_EXCEEDED),
)

# An unexpected failure of the front-end (logged where it happens): no class names it, so it ends
# the stream with INTERNAL, and the agent reconnects after at least a second.
INTERNAL = errors.RetryableError("internal error; reconnect", retry_after_s=1.0)


def code(error: errors.FleetpulseError) -> grpc.StatusCode:
    for kind, status in _CODES:
        if isinstance(error, kind):
            return status
    return grpc.StatusCode.INTERNAL


def retry_after_ms(error: errors.FleetpulseError) -> int:
    """The least delay the error asks for, in whole ms (rounded up), 0 for none."""
    seconds = getattr(error, "retry_after_s", 0.0)
    return max(1, math.ceil(seconds * 1000 - 1e-6)) if seconds > 0 else 0
