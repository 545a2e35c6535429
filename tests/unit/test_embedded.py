"""Waiting for an embedded PostgreSQL that starts slower than pgserver waits (crash recovery)."""

import os
import threading
import time
from pathlib import Path

import pytest

from fleetpulse.embedded import EmbeddedPostgres
from fleetpulse.errors import ConfigError


def pidfile(pgdata: Path, pid: int, status: str) -> None:
    # postmaster.pid: pid, data dir, start time, port, socket dir, listen address, shmem key, status
    lines = [str(pid), str(pgdata), "0", "5432", "/tmp", "", "0 0", status]
    (pgdata / "postmaster.pid").write_text("\n".join(lines) + "\n")


def test_waits_until_the_postmaster_says_ready(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path)
    pg.pgdata.mkdir(parents=True)
    pidfile(pg.pgdata, os.getpid(), "starting")
    timer = threading.Timer(0.5, pidfile, (pg.pgdata, os.getpid(), "ready"))
    timer.start()
    began = time.monotonic()
    pg._wait_ready(30)
    assert time.monotonic() - began >= 0.4
    timer.join()


def test_a_postmaster_that_died_is_an_error_naming_its_log(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path)
    pg.pgdata.mkdir(parents=True)
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    pidfile(pg.pgdata, dead, "starting")
    with pytest.raises(ConfigError, match=r"did not start; see .*log"):
        pg._wait_ready(30)


def test_a_server_never_ready_is_an_error_after_the_timeout(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path)
    pg.pgdata.mkdir(parents=True)
    pidfile(pg.pgdata, os.getpid(), "starting")
    with pytest.raises(ConfigError, match="not ready after 1 s"):
        pg._wait_ready(1)
