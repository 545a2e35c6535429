"""The front-end's coalesced agent writes (ingest/frontend/registry.py) against real PostgreSQL:
many registers and offline marks in one statement each, a refused value failing only its own
agent, and a newer session never marked offline by an older one's end."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from fleetpulse import liveness
from fleetpulse.ingest.frontend.registry import AgentRegistry
from fleetpulse.proto import agent_pb2
from fleetpulse.settings import Settings


def register(agent_id: str, hostname: str = "h") -> agent_pb2.AgentRegister:
    return agent_pb2.AgentRegister(agent_id=agent_id, hostname=hostname, os="linux")


async def with_registry(database_url: str, scenario) -> None:
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=4, open=False)
    await pool.open(wait=True)
    try:
        await scenario(AgentRegistry(pool, Settings(database_url=database_url)))
    finally:
        await pool.close()


def rows(database_url: str, prefix: str) -> dict[str, tuple[str, str, str | None]]:
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT agent_id, status, hostname, session FROM agents WHERE agent_id LIKE %s",
            (prefix + "%",),
        ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in found}


def history(database_url: str, agent_id: str) -> list[tuple[str, str]]:
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT state, cause FROM agent_liveness WHERE agent_id = %s ORDER BY at, id",
            (agent_id,),
        ).fetchall()
    return [(r[0], r[1]) for r in found]


def test_concurrent_registers_and_offline_marks_are_all_written(database_url: str) -> None:
    async def scenario(registry: AgentRegistry) -> None:
        await asyncio.gather(
            *(registry.register(register(f"grp-{i}"), "10.0.0.1", f"s{i}") for i in range(300))
        )
        assert {r[0] for r in rows(database_url, "grp-").values()} == {"online"}
        assert len(rows(database_url, "grp-")) == 300
        await asyncio.gather(
            *(
                registry.disconnected(f"grp-{i}", f"s{i}", liveness.DISCONNECTED, "bye")
                for i in range(0, 300, 2)
            )
        )

    asyncio.run(with_registry(database_url, scenario))
    found = rows(database_url, "grp-")
    assert sum(1 for r in found.values() if r[0] == "offline") == 150
    assert found["grp-0"][0] == "offline" and found["grp-1"][0] == "online"
    assert history(database_url, "grp-0") == [
        ("online", liveness.REGISTERED),
        ("offline", liveness.DISCONNECTED),
    ]
    assert history(database_url, "grp-1") == [("online", liveness.REGISTERED)]


def test_a_value_postgres_refuses_fails_only_its_own_register(database_url: str) -> None:
    async def scenario(registry: AgentRegistry) -> None:
        # A NUL in text is refused by the front-end's checks before it gets here; written
        # anyway, PostgreSQL refuses it, and only that agent's register fails.
        results = await asyncio.gather(
            *(
                registry.register(register(f"bad-{i}", "h\x00" if i == 3 else "h"), "", f"s{i}")
                for i in range(8)
            ),
            return_exceptions=True,
        )
        assert isinstance(results[3], psycopg.DataError)
        assert [r for i, r in enumerate(results) if i != 3] == [None] * 7

    asyncio.run(with_registry(database_url, scenario))
    assert sorted(rows(database_url, "bad-")) == [f"bad-{i}" for i in range(8) if i != 3]


def test_an_old_session_ending_leaves_the_newer_one_online(database_url: str) -> None:
    async def scenario(registry: AgentRegistry) -> None:
        await registry.register(register("sess-1"), "", "old")
        # The same agent twice at once: one statement cannot upsert a row twice, so they go in
        # two, in order (else PostgreSQL refuses the group: "cannot affect row a second time").
        await asyncio.gather(
            registry.register(register("sess-1"), "", "new"),
            registry.register(register("sess-1", "h2"), "", "newer"),
        )
        await registry.disconnected("sess-1", "old", liveness.DISCONNECTED)
        await registry.disconnected("sess-1", "new", liveness.DISCONNECTED)

    asyncio.run(with_registry(database_url, scenario))
    assert rows(database_url, "sess-1") == {"sess-1": ("online", "h2", "newer")}
    assert history(database_url, "sess-1") == [
        ("online", liveness.REGISTERED),
        ("online", liveness.REPLACED),
        ("online", liveness.REPLACED),
    ]


@pytest.mark.parametrize("agents", [1, 40])
def test_settings_loads_answer_each_agent(database_url: str, agents: int) -> None:
    # The coalesced load returns each agent's own settings, None for an agent with none.
    from fleetpulse.ingest import agentsettings

    with psycopg.connect(database_url) as conn:
        for i in range(0, agents, 2):
            agentsettings.update(conn, f"set-{i}", {"collect_interval_ms": 1000 + i}, "test")

    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            loaded = await agentsettings.load_many_async(conn, [f"set-{i}" for i in range(agents)])
        for i, settings in enumerate(loaded):
            if i % 2:
                assert settings is None
            else:
                assert settings is not None and settings.collect_interval_ms == 1000 + i

    asyncio.run(scenario())


def test_credential_lookups_answer_each_token_in_order(database_url: str) -> None:
    from fleetpulse.ingest import credentials

    async def enroll(agent_ids: list[str]) -> list[str]:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            return [await credentials.enroll(conn, agent_id) for agent_id in agent_ids]

    good, revoked = asyncio.run(enroll(["cred-good", "cred-revoked"]))
    with psycopg.connect(database_url) as conn:
        assert credentials.revoke(conn, "cred-revoked", "test")

    async def lookup() -> tuple[list[credentials.Identity | None], set[str]]:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            found = await credentials.lookup_many(
                conn, [good, credentials.new_token(), revoked, good]
            )
            enrolled = await credentials.enrolled_among(
                conn, ["cred-good", "cred-revoked", "cred-never"]
            )
            await conn.commit()
        return found, enrolled

    found, enrolled = asyncio.run(lookup())
    assert found == [
        credentials.Identity("cred-good", False),
        None,
        credentials.Identity("cred-revoked", True),
        credentials.Identity("cred-good", False),
    ]
    assert enrolled == {"cred-good"}
    with psycopg.connect(database_url) as conn:
        first_use = conn.execute(
            "SELECT last_used_at FROM agent_credentials WHERE agent_id = 'cred-good'"
        ).fetchone()
    assert first_use is not None and first_use[0] is not None
    # A later lookup keeps the first use.
    asyncio.run(lookup())
    with psycopg.connect(database_url) as conn:
        again = conn.execute(
            "SELECT last_used_at FROM agent_credentials WHERE agent_id = 'cred-good'"
        ).fetchone()
    assert again == first_use
