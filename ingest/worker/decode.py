"""Turn a chunk of stream entries into columns: one row per point, one BatchRef per batch.

Two forms arrive (keys.FIELD_FORM):

- **Columnar** (``ColumnarBatch``, what the project's agent sends): parsed through the
  ``ColumnarView`` edge view, so the packed values and timestamps are read in place by numpy and
  the series set stays bytes. Series sets are cached per agent by content (a 16-byte digest): a
  known set costs a dict lookup, an unknown one is decoded once and its series resolved together
  with every other unknown series of the chunk. Per batch, a dozen Python operations; per point,
  none (measured in docs/performance.md).
- **Rows** (``MetricBatch``, the original plan's form, still accepted from any agent): decoded with
  protobuf and walked point by point in Python (about 2 µs per point).

A batch that cannot be decoded, or whose shape is inconsistent, is kept with an error: it is
recorded as rejected, never retried, and never blocks the other batches of the chunk.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace

import numpy as np
import orjson
from google.protobuf.message import DecodeError

from fleetpulse import samples
from fleetpulse.ingest import keys, seriesbudgets
from fleetpulse.ingest.worker.series import OVER_BUDGET, SeriesKey, SeriesResolver
from fleetpulse.ingest.worker.validate import series_problem
from fleetpulse.proto import edge_pb2, metric_pb2

# An identity-less batch (sequence 0) is named by its stream entry: epoch 0 and this sequence.
_ENTRY_SEQ_SHIFT = 20
# Bound on the series-set cache (entries); past it the cache starts over.
MAX_CACHED_SERIES_SETS = 200_000
# How long a series refused for its agent's budget stays refused without asking again.
BUDGET_RECHECK_S = 30.0
# Timestamp seconds beyond which microseconds would overflow int64 (nanos included): such a point
# is clamped to it, which the window check then rejects and counts like any other distant point.
_MAX_ROW_SECONDS = 2**63 // 1_000_000 - 10

Entry = tuple[str, str, dict[bytes, bytes]]


@dataclass(frozen=True)
class BatchRef:
    """One stream entry: where it came from and the identity its ledger row gets."""

    stream: str
    entry_id: str
    agent_id: str
    epoch: int
    sequence: int
    error: str | None = None  # set when the entry cannot be used (a permanent error)


@dataclass
class Decoded:
    batches: list[BatchRef] = field(default_factory=list)
    # Per point, aligned: the batch it came from, its series, time (µs since the Unix epoch), value.
    batch_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    series_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    ts_unix_us: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    # The samples row (fleetpulse/samples.py) of each point: a row's points are contiguous, share
    # a batch and a timestamp, have distinct series and are at most samples.MAX_SET_WIDTH.
    row_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # Points refused while decoding (invalid series): (batch index, reason, points).
    rejects: list[tuple[int, str, int]] = field(default_factory=list)

    def shaped(self) -> Decoded:
        """Itself, or (a chunk built without row ids: tools and tests) a copy in row order."""
        if len(self.row_ids) == len(self.ts_unix_us):
            return self
        order, row_ids = samples.shape(self.batch_index, self.ts_unix_us, self.series_ids)
        return replace(
            self,
            batch_index=self.batch_index[order],
            series_ids=self.series_ids[order],
            ts_unix_us=self.ts_unix_us[order],
            values=self.values[order],
            row_ids=row_ids,
        )


def entry_sequence(entry_id: str) -> int:
    """A stable int63 for a stream entry id "<ms>-<n>" (unique within its stream)."""
    millis, _, counter = entry_id.partition("-")
    return (int(millis) << _ENTRY_SEQ_SHIFT) | int(counter)


def labels_key(labels: dict[str, str]) -> str:
    """Canonical JSON of a label set: the series cache key and the jsonb value stored."""
    return orjson.dumps(labels, option=orjson.OPT_SORT_KEYS).decode()


@dataclass
class _Columns:
    """A columnar batch between the two passes: series ids are known only after resolution."""

    index: int
    set_key: tuple[str, bytes]
    series: bytes  # the serialized SeriesSet
    timestamps_ns: np.ndarray
    values: np.ndarray


@dataclass
class _Rows:
    """The row-form points of a chunk, one entry per point."""

    batch_index: list[int] = field(default_factory=list)
    keys: list[SeriesKey] = field(default_factory=list)
    series_ids: list[int] = field(default_factory=list)  # filled by resolution
    ts_unix_us: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


class ChunkDecoder:
    """Decodes chunks; owns the per-process series-set cache in front of the resolver."""

    def __init__(self, resolver: SeriesResolver) -> None:
        self._resolver = resolver
        # Per series set: the series id of each column, -1 where the series is invalid, the
        # reason of each invalid column, and how its columns make rows (_row_plan).
        self._sets: dict[tuple[str, bytes], tuple[np.ndarray, dict[int, str], _RowPlan | None]] = {}
        # Row-form series keys already validated, and the problem of those that are invalid.
        self._row_problems: dict[SeriesKey, str | None] = {}
        # Sets and row keys refused for a series budget: forgotten every BUDGET_RECHECK_S, so
        # that a budget an operator raised (or series that expired) lets them in again.
        self._over_budget_sets: set[tuple[str, bytes]] = set()
        self._over_budget_keys: set[SeriesKey] = set()
        self._budgets_checked = time.monotonic()

    def decode(self, entries: list[Entry]) -> Decoded:
        if len(self._sets) > MAX_CACHED_SERIES_SETS:
            self._sets.clear()  # before the chunk looks anything up, so all it needs is re-resolved
        if time.monotonic() - self._budgets_checked > BUDGET_RECHECK_S:
            self._budgets_checked = time.monotonic()
            for set_key in self._over_budget_sets:
                self._sets.pop(set_key, None)
            for key in self._over_budget_keys:
                self._row_problems.pop(key, None)
            self._over_budget_sets.clear()
            self._over_budget_keys.clear()
        batches: list[BatchRef] = []
        columns: list[_Columns] = []
        rows = _Rows()
        unknown_sets: dict[tuple[str, bytes], bytes] = {}
        for stream, entry_id, fields in entries:
            agent_id = fields[keys.FIELD_AGENT].decode()
            epoch = int(fields[keys.FIELD_EPOCH])
            sequence = int(fields[keys.FIELD_SEQUENCE])
            if sequence == 0:
                epoch, sequence = 0, entry_sequence(entry_id)
            ref = BatchRef(stream, entry_id, agent_id, epoch, sequence)
            payload = fields[keys.FIELD_BATCH]
            try:
                if fields.get(keys.FIELD_FORM, keys.FORM_ROWS) == keys.FORM_COLUMNS:
                    part = self._columns(len(batches), agent_id, payload)
                    columns.append(part)
                    if part.set_key not in self._sets:
                        unknown_sets[part.set_key] = part.series
                else:
                    received_us = int(fields[keys.FIELD_RECEIVED_MS]) * 1000
                    _rows(len(batches), agent_id, payload, received_us, rows)
            except (DecodeError, ValueError) as exc:
                ref = replace(ref, error=f"undecodable: {exc}")
            batches.append(ref)

        self._resolve(unknown_sets, rows, batches, columns)
        return self._assemble(batches, columns, rows)

    @staticmethod
    def _columns(index: int, agent_id: str, payload: bytes) -> _Columns:
        view = edge_pb2.ColumnarView.FromString(payload)
        if (
            view.values
            and view.timestamps_ns
            and not (len(view.values) % 8 or len(view.timestamps_ns) % 8)
        ):
            timestamps = np.frombuffer(view.timestamps_ns, dtype="<i8")
            values = np.frombuffer(view.values, dtype="<f8")
        else:
            # Repeated scalars may legally arrive unpacked (one tag per element); the view then
            # sees nothing (a wire-type mismatch is an unknown field). The full parse handles it.
            full = metric_pb2.ColumnarBatch.FromString(payload)
            timestamps = np.asarray(full.timestamps_ns, dtype=np.int64)
            values = np.asarray(full.values, dtype=np.float64)
        digest = hashlib.blake2b(view.series, digest_size=16).digest()
        return _Columns(index, (agent_id, digest), view.series, timestamps, values)

    def _resolve(
        self,
        unknown_sets: dict[tuple[str, bytes], bytes],
        rows: _Rows,
        batches: list[BatchRef],
        columns: list[_Columns],
    ) -> None:
        """One set-based resolution for every unknown valid series of the chunk (both forms)."""
        set_keys: dict[tuple[str, bytes], list[SeriesKey | None]] = {}
        set_problems: dict[tuple[str, bytes], dict[int, str]] = {}
        for set_key, raw in unknown_sets.items():
            agent_id = set_key[0]
            try:
                entries = metric_pb2.SeriesSet.FromString(raw).entries
            except DecodeError as exc:
                for part in columns:
                    if part.set_key == set_key:
                        batches[part.index] = replace(
                            batches[part.index], error=f"undecodable: {exc}"
                        )
                continue
            problems: dict[int, str] = {}
            keys_: list[SeriesKey | None] = []
            for column, entry in enumerate(entries):
                labels = dict(entry.labels)
                problem = series_problem(entry.name, labels)
                if problem is None:
                    keys_.append((agent_id, entry.name, labels_key(labels)))
                else:
                    problems[column] = problem
                    keys_.append(None)
            set_keys[set_key] = keys_
            set_problems[set_key] = problems
        if len(self._row_problems) > MAX_CACHED_SERIES_SETS * 10:
            # Cleared before this chunk's keys go in: _assemble still needs them to count rejects.
            self._row_problems.clear()
        for key in rows.keys:
            if key not in self._row_problems:
                self._row_problems[key] = series_problem(key[1], orjson.loads(key[2]))
        wanted = list(
            dict.fromkeys(
                [k for ks in set_keys.values() for k in ks if k is not None]
                + [k for k in rows.keys if self._row_problems[k] is None]
            )
        )
        ids = dict(zip(wanted, self._resolver.resolve(wanted), strict=True)) if wanted else {}
        over = {k for k, i in ids.items() if i == OVER_BUDGET}
        for set_key, series_keys in set_keys.items():
            problems = set_problems[set_key]
            if over:
                for column, k in enumerate(series_keys):
                    if k in over:
                        problems[column] = seriesbudgets.REASON
                        self._over_budget_sets.add(set_key)
            column_ids = np.asarray(
                [ids[k] if k is not None and k not in over else -1 for k in series_keys],
                dtype=np.int32,
            )
            self._sets[set_key] = (column_ids, problems, _row_plan(column_ids))
        for k in over.intersection(rows.keys):
            self._row_problems[k] = seriesbudgets.REASON
            self._over_budget_keys.add(k)
        rows.series_ids = [ids.get(k, -1) if k not in over else -1 for k in rows.keys]

    def _assemble(self, batches: list[BatchRef], columns: list[_Columns], rows: _Rows) -> Decoded:
        rejects: list[tuple[int, str, int]] = []
        parts_batch, parts_series, parts_ts, parts_values, parts_row = [], [], [], [], []
        next_row = 0
        for part in columns:
            if batches[part.index].error is not None:
                continue
            ids, problems, plan = self._sets[part.set_key]
            nseries, ntimes = len(ids), len(part.timestamps_ns)
            if len(part.values) != nseries * ntimes or (nseries and not ntimes):
                batches[part.index] = replace(
                    batches[part.index],
                    error=f"invalid shape: {len(part.values)} values for {nseries} series x {ntimes} timestamps",
                )
                continue
            for reason in set(problems.values()):
                columns_ = sum(1 for r in problems.values() if r == reason)
                rejects.append((part.index, reason, columns_ * ntimes))
            if plan is None:  # every column valid, distinct, one row wide: as it arrived
                width, values, row = nseries, part.values, np.repeat(np.arange(ntimes), nseries)
                nrows = ntimes
            else:
                cols, piece, pieces = plan
                width, ids = len(cols), ids[cols]
                values = part.values.reshape(ntimes, nseries)[:, cols].ravel()
                row = np.repeat(np.arange(ntimes) * pieces, width) + np.tile(piece, ntimes)
                nrows = ntimes * pieces
            parts_batch.append(np.full(width * ntimes, part.index, dtype=np.int32))
            parts_series.append(np.tile(ids, ntimes))
            parts_ts.append(np.repeat(part.timestamps_ns // 1000, width))
            parts_values.append(values)
            parts_row.append(row + next_row)
            next_row += nrows
        if rows.batch_index:
            batch_index = np.asarray(rows.batch_index, dtype=np.int32)
            series_ids = np.asarray(rows.series_ids, dtype=np.int32)
            ts_unix_us = np.asarray(rows.ts_unix_us, dtype=np.int64)
            valid = series_ids >= 0
            order, row = samples.shape(batch_index[valid], ts_unix_us[valid], series_ids[valid])
            parts_batch.append(batch_index[valid][order])
            parts_series.append(series_ids[valid][order])
            parts_ts.append(ts_unix_us[valid][order])
            parts_values.append(np.asarray(rows.values, dtype=np.float64)[valid][order])
            parts_row.append(row + next_row)
            if any(self._row_problems.get(key) for key in set(rows.keys)):
                counts: dict[tuple[int, str], int] = {}
                for index, key in zip(rows.batch_index, rows.keys, strict=True):
                    if (problem := self._row_problems.get(key)) is not None:
                        counts[(index, problem)] = counts.get((index, problem), 0) + 1
                rejects += [(index, reason, n) for (index, reason), n in counts.items()]
        if not parts_batch:
            return Decoded(batches=batches, rejects=rejects)
        return Decoded(
            batches=batches,
            batch_index=np.concatenate(parts_batch),
            series_ids=np.concatenate(parts_series).astype(np.int32, copy=False),
            ts_unix_us=np.concatenate(parts_ts).astype(np.int64, copy=False),
            values=np.concatenate(parts_values).astype(np.float64, copy=False),
            row_ids=np.concatenate(parts_row).astype(np.int64, copy=False),
            rejects=rejects,
        )


# How a set's columns make samples rows, when not as they arrived: the valid columns to take,
# in order, the row (of one timestamp's rows) each goes to, and how many rows one timestamp makes.
_RowPlan = tuple[np.ndarray, np.ndarray, int]


def _row_plan(column_ids: np.ndarray) -> _RowPlan | None:
    """None for the usual set (valid, distinct, at most MAX_SET_WIDTH); else the plan that drops
    invalid columns, puts a series' second column in a row of its own and splits wide sets."""
    n = len(column_ids)
    unique = len(np.unique(column_ids)) == n
    if unique and n <= samples.MAX_SET_WIDTH and not (column_ids < 0).any():
        return None
    valid = np.flatnonzero(column_ids >= 0)
    at = np.arange(len(valid))
    ids = column_ids[valid]
    by_id = np.lexsort((valid, ids))
    sorted_ids = ids[by_id]
    first = np.concatenate(([True], sorted_ids[1:] != sorted_ids[:-1]))
    rank = np.empty(len(valid), np.int64)
    rank[by_id] = at - np.maximum.accumulate(np.where(first, at, 0))
    taken = np.lexsort((valid, rank))
    cols, rank = valid[taken], rank[taken]
    new_rank = np.concatenate(([True], rank[1:] != rank[:-1]))
    position = at - np.maximum.accumulate(np.where(new_rank, at, 0))
    piece = np.cumsum(new_rank | (position % samples.MAX_SET_WIDTH == 0)) - 1
    return cols, piece, int(piece[-1]) + 1 if len(piece) else 0


def _rows(index: int, agent_id: str, payload: bytes, received_us: int, rows: _Rows) -> None:
    """The row form, point by point (the one per-point loop left, for the original protocol)."""
    batch = metric_pb2.MetricBatch.FromString(payload)
    for point in batch.metrics:
        stamp = point.timestamp
        seconds = stamp.seconds
        if not -_MAX_ROW_SECONDS <= seconds <= _MAX_ROW_SECONDS:
            seconds = _MAX_ROW_SECONDS if seconds > 0 else -_MAX_ROW_SECONDS
        rows.batch_index.append(index)
        rows.keys.append((agent_id, point.name, labels_key(dict(point.labels))))
        rows.ts_unix_us.append(
            seconds * 1_000_000 + stamp.nanos // 1000 if seconds else received_us
        )
        rows.values.append(point.value)
