"""fleetpulse: run agents on large server fleets and ingest their metrics.

The parts live in sibling folders installed as subpackages: ``fleetpulse.proto`` (wire protocol),
``fleetpulse.agent`` (host agent), ``fleetpulse.ingest`` (front-end, queue, workers),
``fleetpulse.api`` (read API) and ``fleetpulse.bench`` (fleet simulator).
"""

__version__ = "0.1.0"
