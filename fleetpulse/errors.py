"""The project's errors, classified once: every error is either retryable or permanent.

The anchor is the OpenTelemetry Collector's ``consumererror``: a consumer says whether the data it
refused may be retried, and only the edges turn that into a protocol's answer. Here:

- **Retryable** ("try again later, nothing was lost"): the platform is overloaded or a part of it
  is restarting. ``retry_after_s`` is the least delay the caller should wait.
- **Permanent** ("the input or the configuration is wrong"): sending the same thing again cannot
  succeed.

The subclasses name what went wrong, not how a protocol says it. The edges translate them, and only
the edges: the gRPC front-end into status codes (``ingest/frontend/session.py``), the HTTP API into
statuses (``api/app.py``), the Prometheus-compatible API into Prometheus' ``errorType``
(``api/prom.py``), the CLI into exit statuses (``fleetpulse/cli.py``). Messages are one line and name
the problem; an edge passes them through unchanged.
"""

from __future__ import annotations


class FleetpulseError(Exception):
    """Base class of every error raised on purpose by fleetpulse."""

    retryable = False

    def __init__(self, message: str) -> None:
        # One line, whatever a client put in the ids and names that the message quotes.
        message = "\\n".join(str(message).splitlines())
        super().__init__(message)
        self.message = message


class PermanentError(FleetpulseError):
    """Wrong input or state: retrying the same thing cannot succeed."""


class RetryableError(FleetpulseError):
    """A transient condition: the caller should retry after a delay; nothing was lost.

    ``retry_after_s`` is the least delay the platform asks for; 0 leaves it to the caller's own
    backoff."""

    retryable = True

    def __init__(self, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ConfigError(PermanentError):
    """Invalid configuration; the process exits with status 2 and this one-line message."""

    exit_status = 2


class BadInput(PermanentError):
    """A request or message that is malformed or holds a value that cannot be stored."""


class NotFound(PermanentError):
    """The request names something that does not exist (an agent, an asset)."""


class Unauthenticated(PermanentError):
    """No credential, or one that is wrong, expired or revoked."""


class Forbidden(PermanentError):
    """An authenticated caller asks for what its identity does not allow."""


class Conflict(PermanentError):
    """The request clashes with the state of another party (a second machine claiming an agent).

    Permanent for this request; ``retry_after_s`` tells a caller that polls how long to stay away."""

    def __init__(self, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class OutOfOrder(PermanentError):
    """A message that is valid only after another (a heartbeat before register)."""


class Overloaded(RetryableError):
    """The platform refuses work for now: backpressure, a rate limit, a budget."""


class Unavailable(RetryableError):
    """A part the request needs is unreachable or restarting (Redis, PostgreSQL)."""


class Superseded(RetryableError):
    """The work was taken over by a newer party (a newer connection of the same agent)."""


class Timeout(RetryableError):
    """The request ran out of its time budget (a query over its statement timeout)."""
