"""The project's exception hierarchy: every error is either retryable or permanent.

Retryable errors mean "try again later, nothing was lost" (backpressure, a server restarting);
permanent errors mean the input or the configuration is wrong and retrying cannot help. The gRPC
edge and the CLI translate them into status codes and exit statuses at the boundary.
"""

from __future__ import annotations


class FleetpulseError(Exception):
    """Base class of every error raised on purpose by fleetpulse."""


class RetryableError(FleetpulseError):
    """A transient condition: the caller should retry after a delay."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentError(FleetpulseError):
    """Wrong input or state: retrying the same thing cannot succeed."""


class ConfigError(PermanentError):
    """Invalid configuration; the process exits with status 2 and this one-line message."""

    exit_status = 2
