"""The one error the PromQL engine raises, with the type Prometheus' API would answer."""

from __future__ import annotations

from typing import Literal

Kind = Literal["bad_data", "execution", "timeout"]


class PromQLError(ValueError):
    """A query the engine refuses (``bad_data``: it does not parse or its arguments are wrong) or
    cannot finish (``execution``: it is valid but its data breaks a rule, such as two series with
    one label set); the message names what and, where it can, where."""

    def __init__(self, message: str, kind: Kind = "bad_data") -> None:
        super().__init__(message)
        self.kind: Kind = kind
