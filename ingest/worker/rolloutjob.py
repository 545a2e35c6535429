"""The rollout job inside a worker process (jobs.py): every ``rollout_check_interval_s``, the
process holding the ROLLOUT advisory lock moves each active rollout one step
(ingest/rollouts.py ``RolloutMover``); the others skip the round. Any worker process can take
over, so a rollout goes on while one worker is up, and picks up from its rows after a restart."""

from __future__ import annotations

import psycopg
import redis

from fleetpulse import connections, locks
from fleetpulse.ingest.rollouts import RolloutMover
from fleetpulse.ingest.worker.jobs import JobThread
from fleetpulse.settings import Settings


class RolloutThread(JobThread):
    def __init__(self, settings: Settings) -> None:
        assert settings.database_url
        super().__init__("rollouts", settings.database_url, settings.rollout_check_interval_s)
        self._settings = settings
        self._mover: RolloutMover | None = None
        self._redis: redis.Redis | None = None

    def prepare(self, conn: psycopg.Connection) -> None:
        conn.execute("SET TimeZone = 'UTC'")
        if self._redis is None and self._settings.redis_url:
            self._redis = connections.redis_client(self._settings.redis_url)
        self._mover = RolloutMover(conn, self._redis, self._settings)

    def round(self, conn: psycopg.Connection) -> None:
        assert self._mover is not None
        locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (locks.ROLLOUT,)).fetchone()
        if not (locked and locked[0]):
            return  # another worker process moves the rollouts
        try:
            self._mover.round()
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (locks.ROLLOUT,))
