"""The advisory lock keys (fleetpulse/locks.py): one per job, none shared."""

from fleetpulse import locks


def test_every_job_has_its_own_key() -> None:
    keys = list(locks.ALL.values())
    assert set(keys) == {
        locks.MIGRATION,
        locks.ROLLUP,
        locks.COMPACTION,
        locks.COMPRESS,
        locks.ROLLOUT,
        locks.RULES,
    }
    assert len(set(keys)) == len(keys)  # no two jobs on one key
    assert all(0 < key < 2**63 for key in keys)  # PostgreSQL's bigint
