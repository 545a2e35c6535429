"""The committed relay: tells each connected agent what the workers committed of its batches
(``ServerMessage.committed``), so that its spool can drop them. The workers announce commits on the
committed feed (ingest/watermark.py); each front-end relays those of the agents it holds."""

from __future__ import annotations

import asyncio
import logging

import redis
import redis.asyncio

from fleetpulse.ingest import platformbatches, watermark
from fleetpulse.ingest.frontend import replies, selfmetrics
from fleetpulse.ingest.frontend.sessions import Sessions
from fleetpulse.proto import wire

log = logging.getLogger(__name__)


async def relay_committed(redis_client: redis.asyncio.Redis, sessions: Sessions) -> None:
    feed = await watermark.AsyncCommittedFeed.start(redis_client)
    while True:
        try:
            announced = await feed.read(block_ms=1000)
        except redis.RedisError as exc:
            log.warning("committed feed unavailable: %s", exc)
            await asyncio.sleep(1.0)
            continue
        for committed in announced:
            session = sessions.get(committed.agent_id)
            if session is None or session.protocol < wire.PROTOCOL_CREDENTIALS:
                continue
            if platformbatches.is_platform_epoch(committed.epoch):
                continue  # a batch the platform wrote about the agent: not in its spool

            session.send(replies.committed(committed.epoch, committed.ranges))
            selfmetrics.COMMITTED_RELAYED.inc()
