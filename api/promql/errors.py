"""The one error the PromQL engine raises: bad input in fleetpulse's model (fleetpulse/errors.py),
with the type Prometheus' API answers it as (api/prom.py translates)."""

from __future__ import annotations

from typing import Literal

from fleetpulse.errors import BadInput

Kind = Literal["bad_data", "execution"]


class PromQLError(BadInput):
    """A query the engine refuses (``bad_data``: it does not parse or its arguments are wrong) or
    cannot finish (``execution``: it is valid but its data breaks a rule, such as two series with
    one label set); the message names what and, where it can, where. Permanent either way: the
    same query fails the same way."""

    def __init__(self, message: str, kind: Kind = "bad_data") -> None:
        super().__init__(message)
        self.kind: Kind = kind
