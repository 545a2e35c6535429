"""How a storage job runs inside a worker process: a thread that does one round every interval on
its own autocommit connection, for as long as the worker runs.

The rollups (rollups.py), the compression of closed hours (compress.py) and the packing of rollup
partitions (compaction.py) each say what one round does; this is the loop they share. A database
error ends the round and the connection (the next round reconnects: PostgreSQL restarting is
survived); any other error is a bug, logged with its stack, and the thread lives on, so a job
never stops in silence. Whatever a failed round left undone keeps its mark and is redone.
"""

from __future__ import annotations

import logging
import threading

import psycopg

from fleetpulse import connections

log = logging.getLogger(__name__)


class JobThread(threading.Thread):
    """One round every ``interval_s`` (the first after one interval: a worker that starts and
    stops at once does no work); ``keep_connection=False`` connects for each round instead."""

    def __init__(
        self, name: str, database_url: str, interval_s: float, keep_connection: bool = True
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._database_url = database_url
        self._interval_s = interval_s
        self._keep_connection = keep_connection
        self._stop_event = threading.Event()
        self.rounds = 0

    def prepare(self, conn: psycopg.Connection) -> None:
        """Called on each new connection, before its first round."""

    def round(self, conn: psycopg.Connection) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        conn: psycopg.Connection | None = None
        while not self._stop_event.wait(self._interval_s):
            try:
                if conn is None or conn.closed:
                    conn = connections.pg_connect(self._database_url, autocommit=True)
                    self.prepare(conn)
                self.round(conn)
                self.rounds += 1
            except psycopg.Error as exc:
                log.warning(
                    "%s round failed, retrying in %.0f s: %s", self.name, self._interval_s, exc
                )
                _close(conn)
                conn = None
            except Exception:
                log.exception("%s round failed", self.name)
                _close(conn)
                conn = None
            if not self._keep_connection:
                _close(conn)
                conn = None
        _close(conn)


def _close(conn: psycopg.Connection | None) -> None:
    if conn is not None:
        conn.close()
