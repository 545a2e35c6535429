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


def test_example_systemd_unit_runs_the_agent_and_is_packaged(repo_root: Path) -> None:
    import configparser

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(repo_root / "agent" / "fleetpulse-agent.service")
    assert unit["Service"]["ExecStart"].split()[1:4] == [
        "agent",
        "--config",
        "/etc/fleetpulse/agent.yaml",
    ]
    assert unit["Service"]["Restart"] == "always"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    pyproject = (repo_root / "pyproject.toml").read_text()
    assert '"fleetpulse.agent" = ["*.yaml", "*.service"]' in pyproject
