"""What a collector returns: samples, and the naming rules every one of them follows.

A sample is ``(name, value, labels)``. Names are Prometheus-style (``[a-zA-Z_:][a-zA-Z0-9_:]*``)
with the unit in the name (``memory_bytes``, ``cpu_usage_percent``).

Counters are sent as the raw cumulative values the kernel reports, with a ``_total`` suffix
(``net_bytes_total``, ``disk_reads_total``); the query side computes rates. Sending raw counters
rather than per-interval deltas keeps the agent stateless across restarts and makes a lost or
replayed batch harmless: a rate over the next two points is still right. Counters reset when the
host reboots or a device reappears; the query side treats a decrease as a reset.

Every sample gets a label dict of its own, so a consumer may change one without touching others.
"""

from __future__ import annotations

from typing import TypeAlias

Sample: TypeAlias = tuple[str, float, dict[str, str]]
