"""The front-end's own Prometheus metrics (``/metrics`` on ``ingest_metrics_port``, and stored as
series: fleetpulse/selfmetrics.py).

With ``fleetpulse ingest --processes N`` every process serves its own on port + index - 1
(the gRPC port is shared, the metrics are not: a scrape must see one process's counters).
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger(__name__)

CONNECTED = Gauge("fleetpulse_ingest_connected_agents", "Agents with an open, registered stream")
MESSAGES = Counter("fleetpulse_ingest_messages", "AgentMessages received")
BYTES = Counter("fleetpulse_ingest_received_bytes", "Bytes of AgentMessages received")
HEARTBEATS = Counter("fleetpulse_ingest_heartbeats", "Heartbeats acknowledged")
BATCHES = Counter("fleetpulse_ingest_batches_accepted", "Metric batches XADDed and acknowledged")
REJECTS = Counter(
    "fleetpulse_ingest_rejects",
    "Streams ended with an error status, and batches refused, by reason",
    ["reason"],
)
XADD_SECONDS = Histogram(
    "fleetpulse_ingest_xadd_seconds",
    "Time from handing a batch to the XADD pipeline to its confirmation",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
BACKPRESSURE = Gauge(
    "fleetpulse_ingest_backpressure", "1 while metric batches are refused because workers lag"
)
QUEUED = Gauge("fleetpulse_ingest_queued_batches", "Batches in the streams, not yet committed")
CONFLICTS = Counter(
    "fleetpulse_ingest_identity_conflicts",
    "Registrations refused because another machine holds the agent id (a cloned image)",
)
COMMITTED_RELAYED = Counter(
    "fleetpulse_ingest_committed_relayed", "Committed announcements relayed to agents"
)
