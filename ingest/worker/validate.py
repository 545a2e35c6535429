"""What a series must look like to be stored; everything else is rejected and counted.

Rules (checked once per distinct series: for the columnar form when a series set is first seen,
for the row form when a series key is first seen by this worker):

- metric name: Prometheus naming rule ``[a-zA-Z_:][a-zA-Z0-9_:]*``, at most MAX_NAME_CHARS;
- label names: ``[a-zA-Z_][a-zA-Z0-9_]*``, at most MAX_LABEL_NAME_CHARS, at most MAX_LABELS per series;
- label values: at most MAX_LABEL_VALUE_CHARS, no NUL character (PostgreSQL text cannot hold one).

Invalid UTF-8 never gets this far: protobuf refuses to decode such a string, and the batch is
rejected as undecodable. Values are not checked: NaN and ±Inf are stored as they are (they are
valid float8 values and meaningful samples, e.g. an empty ratio); the API renders them as null.
"""

from __future__ import annotations

import re

MAX_NAME_CHARS = 200
MAX_LABELS = 32
MAX_LABEL_NAME_CHARS = 100
MAX_LABEL_VALUE_CHARS = 1024

REASON_INVALID_NAME = "invalid_metric_name"
REASON_INVALID_LABEL = "invalid_label_name"
REASON_TOO_MANY_LABELS = "too_many_labels"
REASON_LABEL_VALUE = "invalid_label_value"

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def series_problem(name: str, labels: dict[str, str]) -> str | None:
    """The reason this series cannot be stored, or None when it is fine."""
    if len(name) > MAX_NAME_CHARS or not _NAME.fullmatch(name):
        return REASON_INVALID_NAME
    if len(labels) > MAX_LABELS:
        return REASON_TOO_MANY_LABELS
    for key, value in labels.items():
        if len(key) > MAX_LABEL_NAME_CHARS or not _LABEL.fullmatch(key):
            return REASON_INVALID_LABEL
        if len(value) > MAX_LABEL_VALUE_CHARS or "\x00" in value:
            return REASON_LABEL_VALUE
    return None
