"""The platform's own batches: their epochs never meet an agent's, and their bytes are the
ColumnarBatch protobuf itself decodes."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fleetpulse.ingest import platformbatches
from fleetpulse.proto import metric_pb2


def test_epochs_name_their_writer_and_never_meet_an_agents() -> None:
    a = platformbatches.epoch("rules", "fleet.yml/agents")
    assert a == platformbatches.epoch("rules", "fleet.yml/agents")
    assert a != platformbatches.epoch("rules", "fleet.yml/disks")
    assert a != platformbatches.epoch("remote_write", "fleet.yml/agents")
    assert platformbatches.is_platform_epoch(a)
    assert a < 2**63  # the ledger's bigint
    assert not platformbatches.is_platform_epoch(int(time.time() * 1000))


def test_encode_is_the_columnar_batch_protobuf_reads() -> None:
    series = [("up", {"job": "a"}), ("load1", {})]
    values = np.array([[1.0, 0.5], [np.nan, -0.0]])
    stamps = np.array([1_000_000_000, 2_000_000_000])
    data = platformbatches.encode("web-1", 7, 9, series, stamps, values)
    batch = metric_pb2.ColumnarBatch.FromString(data)
    assert (batch.agent_id, batch.epoch, batch.sequence) == ("web-1", 7, 9)
    assert [(e.name, dict(e.labels)) for e in batch.series.entries] == series
    assert list(batch.timestamps_ns) == [1_000_000_000, 2_000_000_000]
    got = np.array(batch.values)
    assert got[0] == 1.0 and got[1] == 0.5 and np.isnan(got[2])
    assert got[3] == 0.0 and np.signbit(got[3])


def test_encode_refuses_a_shape_that_does_not_add_up_and_a_missing_identity() -> None:
    with pytest.raises(ValueError, match="3 values for 2 series x 1 timestamps"):
        platformbatches.encode("a", 1, 1, [("x", {}), ("y", {})], np.array([1]), np.ones(3))
    with pytest.raises(ValueError, match="sequence"):
        platformbatches.encode("a", 1, 0, [("x", {})], np.array([1]), np.ones(1))
