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


def test_compose_is_secure_by_default(repo_root: Path) -> None:
    """TLS on the agent port from the first agent, every secret from .env (issue 18, point 7)."""
    text = (repo_root / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    services = compose["services"]
    # Secrets only as required variables: no fixed password, no default token.
    assert "fleetpulse:fleetpulse@" not in text
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD:?"
    )
    assert services["api"]["environment"]["FLEETPULSE_API_KEYS"].startswith(
        "${FLEETPULSE_API_KEYS:?"
    )
    # The certs service creates the CA once, through the real CLI; ingest serves its certificate.
    args = build_parser().parse_args(services["certs"]["command"])
    assert (args.command, args.certs_command, args.if_absent) == ("certs", "init", True)
    assert "ingest" in args.name
    ingest = services["ingest"]
    assert ingest["environment"]["FLEETPULSE_GRPC_TLS_CERT_FILE"] == f"{args.dir}/server.pem"
    assert ingest["environment"]["FLEETPULSE_GRPC_TLS_KEY_FILE"] == f"{args.dir}/server-key.pem"
    assert ingest["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    # The compose agent trusts that CA (the agent would refuse plaintext to ingest:9090).
    agent_config = yaml.safe_load(compose["configs"]["agent-config"]["content"])["server"]
    assert agent_config["tls"] is True and agent_config["tls_ca_file"] == f"{args.dir}/ca.pem"
    assert f"certs:{args.dir}:ro" in services["agent"]["volumes"]


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
