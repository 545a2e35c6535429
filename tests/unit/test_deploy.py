"""docker-compose.yml stays in step with the CLI (no Docker engine is needed to check that)."""

from __future__ import annotations

from pathlib import Path

import yaml

from fleetpulse.cli import build_parser


def test_compose_services_run_real_subcommands(repo_root: Path) -> None:
    compose = yaml.safe_load((repo_root / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "ingest", "worker", "api", "agent"} <= set(services)
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    assert "--appendonly" in services["redis"]["command"]
    parser = build_parser()
    for name in ("migrate", "ingest", "worker", "api", "agent"):
        args = parser.parse_args(services[name]["command"])
        assert args.command == name
    agent_config = yaml.safe_load(compose["configs"]["agent-config"]["content"])
    assert agent_config["server"]["address"] == "ingest:9090" and agent_config["agent"]["id"]
