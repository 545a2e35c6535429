"""Per-agent credentials: issued at enrollment, stored hashed, checked per stream, revocable.

An agent's first register is made with the fleet's enrollment token; the front-end then issues the
agent its own credential (``fpa_`` + 32 random bytes, URL-safe), returns it once in
``ServerMessage.credential`` and keeps only its SHA-256. Later streams authenticate with it, and the
identity of the stream is the credential's agent_id, whatever the payloads say.

Only agents that declare ``AgentRegister.protocol >= 1`` are issued one: an agent generated from
the original plan's .proto files would not understand the message, and keeps using the token as
that plan intended. The enrollment token can claim an agent_id again only while its credential has
never been used, or after it was revoked (``fleetpulse agents revoke ID``). Credentials are high-entropy
random strings, so looking them up by hash is safe (no secret is compared byte by byte).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import psycopg
from psycopg import AsyncConnection

TOKEN_PREFIX = "fpa_"  # noqa: S105 (a prefix that marks credentials, not a secret)


class AlreadyEnrolled(Exception):
    """The enrollment token cannot claim an agent_id whose credential is in use."""


@dataclass(frozen=True)
class Identity:
    agent_id: str
    revoked: bool


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def looks_like_credential(token: str) -> bool:
    return token.startswith(TOKEN_PREFIX)


async def lookup(conn: AsyncConnection, token: str) -> Identity | None:
    cur = await conn.execute(
        "UPDATE agent_credentials SET last_used_at = coalesce(last_used_at, now())"
        " WHERE token_hash = %s RETURNING agent_id, revoked_at IS NOT NULL",
        (token_hash(token),),
    )
    row = await cur.fetchone()
    return Identity(row[0], bool(row[1])) if row else None


async def ensure_claimable(conn: AsyncConnection, agent_id: str) -> None:
    """Raise AlreadyEnrolled when the enrollment token may not claim ``agent_id`` (see above)."""
    cur = await conn.execute(
        "SELECT 1 FROM agent_credentials"
        " WHERE agent_id = %s AND last_used_at IS NOT NULL AND revoked_at IS NULL",
        (agent_id,),
    )
    if await cur.fetchone():
        raise AlreadyEnrolled(agent_id)


async def enroll(conn: AsyncConnection, agent_id: str) -> str:
    """Issue a new credential for ``agent_id`` (replacing an unused or revoked one)."""
    token = new_token()
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT last_used_at IS NOT NULL AND revoked_at IS NULL"
            " FROM agent_credentials WHERE agent_id = %s FOR UPDATE",
            (agent_id,),
        )
        row = await cur.fetchone()
        if row and row[0]:
            raise AlreadyEnrolled(agent_id)
        await conn.execute(
            "INSERT INTO agent_credentials (agent_id, token_hash) VALUES (%s, %s)"
            " ON CONFLICT (agent_id) DO UPDATE SET token_hash = EXCLUDED.token_hash,"
            " created_at = now(), last_used_at = NULL, revoked_at = NULL",
            (agent_id, token_hash(token)),
        )
    return token


def revoke(conn: psycopg.Connection, agent_id: str) -> bool:
    """Revoke the agent's credential; True if it had one that was not revoked yet."""
    cur = conn.execute(
        "UPDATE agent_credentials SET revoked_at = now()"
        " WHERE agent_id = %s AND revoked_at IS NULL",
        (agent_id,),
    )
    return cur.rowcount > 0
