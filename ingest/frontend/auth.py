"""Who is at the other end of a stream: the bearer token, and enrollment.

The stream's bearer token is either the enrollment token (the agent then names itself at register
and is issued its own credential, ingest/credentials.py) or an agent credential (the identity is
the credential's agent_id). The enrollment token names only ids without a credential in force
(never enrolled, or revoked): an id is bound to its credential from the moment it is issued, and a
register that claims it with the token is refused before anything the claimant sent is stored or
any live session of the agent is touched.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from fleetpulse import errors
from fleetpulse.ingest import credentials
from fleetpulse.ingest.coalesce import Coalescer
from fleetpulse.proto import wire


@dataclass(frozen=True)
class Identity:
    enrolling: bool  # the enrollment token: the agent names itself at register
    agent_id: str | None  # a credential's agent


class Authenticator:
    """Checks are coalesced (ingest/coalesce.py): a reconnecting fleet's credentials are looked
    up a few hundred per query, not one each."""

    def __init__(self, enrollment_token: str, pool: AsyncConnectionPool) -> None:
        self._token = enrollment_token.encode()
        self._pool = pool
        self._lookups: Coalescer[str, credentials.Identity | None] = Coalescer(
            self._lookup_many, name="credential-lookups"
        )
        self._enrolled: Coalescer[str, bool] = Coalescer(
            self._enrolled_many, name="enrolled-checks"
        )

    async def _lookup_many(self, tokens: list[str]) -> list[credentials.Identity | None]:
        async with self._pool.connection() as conn:
            return await credentials.lookup_many(conn, tokens)

    async def _enrolled_many(self, agent_ids: list[str]) -> list[bool]:
        async with self._pool.connection() as conn:
            enrolled = await credentials.enrolled_among(conn, agent_ids)
        return [agent_id in enrolled for agent_id in agent_ids]

    async def identify(self, metadata: Iterable[tuple[str, object]] | None) -> Identity:
        presented = wire.bearer_token(metadata)
        if presented is None:
            raise errors.Unauthenticated(
                "missing credential: send metadata "
                "'authorization: Bearer <agent credential or enrollment token>'"
            )
        if hmac.compare_digest(presented.encode(), self._token):
            return Identity(enrolling=True, agent_id=None)
        identity = None
        if credentials.looks_like_credential(presented):
            identity = await self._lookups.submit(presented)
        if identity is None:
            raise errors.Unauthenticated("invalid credential")
        if identity.revoked:
            raise errors.Unauthenticated(
                f"credential of {identity.agent_id!r} was revoked; "
                "enroll again with the enrollment token"
            )
        return Identity(enrolling=False, agent_id=identity.agent_id)

    async def refuse_enrolled(self, agent_id: str) -> None:
        """The enrollment token may not register an id whose credential is in force."""
        if await self._enrolled.submit(agent_id):
            raise _already_enrolled(agent_id)

    async def enroll(self, agent_id: str) -> str:
        """Issue ``agent_id`` its credential (the token, shown once)."""
        async with self._pool.connection() as conn:
            try:
                return await credentials.enroll(conn, agent_id)
            except credentials.AlreadyEnrolled:  # enrolled by another stream since the check
                raise _already_enrolled(agent_id) from None


def _already_enrolled(agent_id: str) -> errors.Forbidden:
    return errors.Forbidden(
        f"agent {agent_id!r} is enrolled: connect with its credential, "
        f"or revoke it (fleetpulse agents revoke {agent_id}) to enroll again"
    )
