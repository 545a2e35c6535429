"""One factory each for the platform's Redis and PostgreSQL connections (anchor: arq's
``connections.py``), so that a connection option is set in one place for every process.

- **Redis**: every client sets ``REDIS_SOCKET_TIMEOUT_S`` instead of the library's default (none
  before redis-py 8, 5 s from 8 on): a Redis that stops answering is an error after this long, not
  a hang. A client that blocks on reads (a worker's XREADGROUP) is given its block time on top.
- **PostgreSQL**: plain connections and the async pools the front-end and the API share; each
  caller still says what it needs (autocommit, pool sizes, a per-connection setup).

Server-side only: the agent never imports this module (it needs neither client library).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import redis
import redis.asyncio
from psycopg_pool import AsyncConnectionPool

REDIS_SOCKET_TIMEOUT_S = 5.0


def redis_client(url: str, *, block_s: float = 0.0) -> redis.Redis:
    """A synchronous Redis client; ``block_s``: the longest blocking read it makes."""
    return redis.Redis.from_url(url, socket_timeout=REDIS_SOCKET_TIMEOUT_S + block_s)


def redis_async(url: str) -> redis.asyncio.Redis:
    """An asyncio Redis client."""
    return redis.asyncio.Redis.from_url(url, socket_timeout=REDIS_SOCKET_TIMEOUT_S)


def pg_connect(url: str, *, autocommit: bool = False, **options: Any) -> psycopg.Connection[Any]:
    """A synchronous PostgreSQL connection."""
    return psycopg.connect(url, autocommit=autocommit, **options)


async def pg_connect_async(
    url: str, *, autocommit: bool = False, **options: Any
) -> psycopg.AsyncConnection[Any]:
    """An asyncio PostgreSQL connection."""
    return await psycopg.AsyncConnection.connect(url, autocommit=autocommit, **options)


def pg_pool_async(
    url: str,
    *,
    min_size: int,
    max_size: int,
    name: str,
    configure: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None = None,
    check: bool = False,
) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
    """An asyncio pool, not yet open (``await pool.open(wait=True)``). ``check``: one round trip
    per checkout, so that the first request after a database restart gets a fresh connection."""
    return AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        open=False,
        configure=configure,
        check=AsyncConnectionPool.check_connection if check else None,
        name=name,
    )
