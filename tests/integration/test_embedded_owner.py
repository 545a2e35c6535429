"""Each embedded server has one owner (fleetpulse/embedded.py): never two on one directory, and
what an owner that died left running is stopped by the next one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from fleetpulse.datadir import DirInUse
from fleetpulse.embedded import EmbeddedPostgres, EmbeddedRedis, _alive

pytestmark = pytest.mark.integration


def test_a_second_redis_on_one_data_dir_is_refused_and_the_first_keeps_its_socket(
    tmp_path: Path,
) -> None:
    first = EmbeddedRedis(tmp_path)
    url = first.start()
    try:
        second = EmbeddedRedis(tmp_path)
        with pytest.raises(DirInUse, match=rf"embedded Redis in .* is in use by pid {os.getpid()}"):
            second.start()
        second.stop()  # what a caller's cleanup does: must not touch the owner's server
        client = redis.Redis.from_url(url)
        assert client.ping()  # the socket is still there, served by the first
        client.close()
    finally:
        first.stop()
    assert first.start() == url  # released at stop: the directory can be owned again
    first.stop()


def test_a_second_postgres_on_one_data_dir_is_refused(tmp_path: Path) -> None:
    first = EmbeddedPostgres(tmp_path)
    first.start()
    try:
        pid = first.pid
        with pytest.raises(DirInUse, match=r"embedded PostgreSQL in .* is in use"):
            EmbeddedPostgres(tmp_path).start()
        assert pid is not None and _alive(pid)
    finally:
        first.stop()
    assert pid is not None and not _alive(pid)


def test_a_redis_left_by_a_dead_owner_is_stopped_before_a_new_one_opens_its_aof(
    tmp_path: Path,
) -> None:
    old = EmbeddedRedis(tmp_path)
    client = redis.Redis.from_url(old.start())
    client.set("kept", "yes")
    client.close()
    leftover = old.pid
    assert leftover is not None
    # The owner "dies": its lock is released (the kernel does that), its server runs on.
    old._lock.release()
    orphan, old._proc = old._proc, None
    new = EmbeddedRedis(tmp_path)
    try:
        client = redis.Redis.from_url(new.start())
        assert not _alive(leftover)
        assert new.pid != leftover
        assert client.get("kept") == b"yes"  # the leftover wrote its AOF as it stopped
        client.close()
    finally:
        new.stop()
        assert orphan is not None
        if orphan.poll() is None:
            orphan.kill()
        orphan.wait()
