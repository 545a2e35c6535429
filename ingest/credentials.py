"""Per-agent credentials: issued at enrollment, stored hashed, checked per stream, revocable.

An agent's first register is made with the fleet's enrollment token; the front-end then issues the
agent its own credential (``fpa_`` + 32 random bytes, URL-safe), returns it once in
``ServerMessage.credential`` and keeps only its SHA-256. Later streams authenticate with it, and the
identity of the stream is the credential's agent_id, whatever the payloads say.

Only agents that declare ``AgentRegister.protocol >= 1`` are issued one: an agent generated from
the original plan's .proto files would not understand the message, and keeps using the token as
that plan intended.

An agent_id is bound to its credential from the moment the credential is issued, not from its first
use: the stream that enrolled may stay open for days before the agent connects with it, and until
then nothing tells the real agent from anyone else holding the token. So the enrollment token lets
its holder:

- enroll an agent_id that never enrolled (no row here), which binds the id to the new credential;
- enroll an agent_id whose credential was revoked (``fleetpulse agents revoke ID``), likewise;
- register as an original-protocol agent (protocol 0, never issued a credential) under an agent_id
  with no credential in force (never enrolled, or revoked): such an id is only as safe as the token.

It cannot register under an agent_id whose credential is in force, whatever the protocol, whether
the credential was used yet or not and whether its agent is connected or not (``AlreadyEnrolled``;
the front-end refuses before it stores anything the claimant sent). The price: an agent that loses
its credential (its state dir wiped, or it died between the server issuing the credential and
writing it to disk) can enroll again only after ``fleetpulse agents revoke ID``.

Credentials are high-entropy random strings, so looking them up by hash is safe (no secret is
compared byte by byte). ``last_used_at`` (when a credential first authenticated a stream) is kept
for operators; no decision here depends on it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import psycopg
from psycopg import AsyncConnection

from fleetpulse import auditlog

TOKEN_PREFIX = "fpa_"  # noqa: S105 (a prefix that marks credentials, not a secret)


class AlreadyEnrolled(Exception):
    """The enrollment token cannot claim an agent_id whose credential is in force."""


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


# A credential's first use is recorded once; later lookups only read (no row version per stream).
_LOOKUP = """
WITH found AS (
    SELECT token_hash, agent_id, revoked_at IS NOT NULL AS revoked, last_used_at
    FROM agent_credentials WHERE token_hash = ANY(%s)
), first_use AS (
    UPDATE agent_credentials c SET last_used_at = now()
    FROM found WHERE c.token_hash = found.token_hash AND found.last_used_at IS NULL
)
SELECT token_hash, agent_id, revoked FROM found
"""


async def lookup_many(conn: AsyncConnection, tokens: list[str]) -> list[Identity | None]:
    """The identity of each presented token, in order (None: no such credential)."""
    hashes = [token_hash(token) for token in tokens]
    cur = await conn.execute(_LOOKUP, (hashes,))
    found = {bytes(row[0]): Identity(row[1], bool(row[2])) for row in await cur.fetchall()}
    return [found.get(h) for h in hashes]


async def enrolled_among(conn: AsyncConnection, agent_ids: list[str]) -> set[str]:
    """Which of ``agent_ids`` have a credential in force (the enrollment token may not claim
    them, see above)."""
    cur = await conn.execute(
        "SELECT agent_id FROM agent_credentials WHERE agent_id = ANY(%s) AND revoked_at IS NULL",
        (agent_ids,),
    )
    return {row[0] for row in await cur.fetchall()}


async def enroll(conn: AsyncConnection, agent_id: str) -> str:
    """Issue a new credential for ``agent_id`` (never enrolled, or revoked), committed on return;
    raise AlreadyEnrolled when it has one in force."""
    token = new_token()
    # One statement decides and writes: of two enrollments of the same new id at once, the
    # second waits on the first's row, then finds it in force and issues nothing.
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO agent_credentials (agent_id, token_hash) VALUES (%s, %s)"
            " ON CONFLICT (agent_id) DO UPDATE SET token_hash = EXCLUDED.token_hash,"
            " created_at = now(), last_used_at = NULL, revoked_at = NULL"
            " WHERE agent_credentials.revoked_at IS NOT NULL"
            " RETURNING agent_id",
            (agent_id, token_hash(token)),
        )
        if await cur.fetchone() is None:
            raise AlreadyEnrolled(agent_id)
        await auditlog.record_async(
            conn, auditlog.BY_ENROLLMENT, auditlog.AGENT_ENROLL, agent_id, {}
        )
    return token


def revoke(conn: psycopg.Connection, agent_id: str, actor: str) -> bool:
    """Revoke the agent's credential (``actor`` did: the audit log); True if it had one that was
    not revoked yet."""
    with conn.transaction():
        cur = conn.execute(
            "UPDATE agent_credentials SET revoked_at = now()"
            " WHERE agent_id = %s AND revoked_at IS NULL",
            (agent_id,),
        )
        if cur.rowcount > 0:
            auditlog.record(conn, actor, auditlog.CREDENTIAL_REVOKE, agent_id, {})
    return cur.rowcount > 0
