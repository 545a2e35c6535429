"""Every PostgreSQL advisory lock the platform takes, in one place, so that no two jobs share one.

Each key is one job's "only one process at a time" across the whole platform (every worker
process runs the jobs' threads; the one that holds the key works, the others skip or wait). Two
jobs on one key would exclude each other for no reason: the index packing once shared the rollup
job's key, and the rollups skipped their rounds for the length of a REINDEX (about 100 s; issue
17). The keys are 64-bit constants, "fleet" in ASCII and a number; any process that takes one
must use the same value, which is why they are constants and not configuration.
"""

from __future__ import annotations

_PREFIX = 0x666C656574_00  # "fleet"

MIGRATION = _PREFIX | 0x01  # fleetpulse/migrate.py: schema migrations
ROLLUP = _PREFIX | 0x02  # ingest/worker/rollups.py: the rollup job
COMPACTION = _PREFIX | 0x03  # ingest/worker/compaction.py: packing rollup partitions' indexes
COMPRESS = _PREFIX | 0x04  # ingest/worker/compress.py: compressing closed hours
ROLLOUT = _PREFIX | 0x05  # ingest/worker/rolloutjob.py: moving the settings rollouts
RULES = _PREFIX | 0x06  # api/rules/evaluator.py: the one rule evaluator of the platform

ALL = {
    "migration": MIGRATION,
    "rollup": ROLLUP,
    "compaction": COMPACTION,
    "compress": COMPRESS,
    "rollout": ROLLOUT,
    "rules": RULES,
}
