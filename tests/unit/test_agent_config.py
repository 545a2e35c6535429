"""The agent config loader: the original file format, defaults, and one-line errors per key."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from fleetpulse.agent.collectors.names import COLLECTORS
from fleetpulse.agent.config import AgentConfig, load_config
from fleetpulse.errors import ConfigError

# Verbatim copy of the origin's config.example.yaml: a file written for the original agent.
ORIGIN_EXAMPLE = """\
server:
  address: "localhost:9090"
  tls: false

agent:
  id: "agent-001"
  collect_interval: 30
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def write(tmp_path: Path, text: str, name: str = "agent.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


def test_origin_example_loads_unchanged(tmp_path: Path, home: Path) -> None:
    config = load_config(write(tmp_path, ORIGIN_EXAMPLE), env={})

    assert config == AgentConfig(
        server_address="localhost:9090",
        server_tls=False,
        enrollment_token=None,
        tls_ca_file=None,
        agent_id="agent-001",
        collect_interval_s=30.0,
        heartbeat_interval_s=10.0,
        state_dir=home / ".local/state/fleetpulse-agent/agent-001",
        collectors=None,
    )
    assert isinstance(config.collect_interval_s, float)


def test_defaults_when_only_agent_id_is_set(tmp_path: Path, home: Path) -> None:
    config = load_config(write(tmp_path, "agent:\n  id: a1\n"), env={})

    assert config.server_address == "localhost:9090"
    assert config.server_tls is False
    assert config.collect_interval_s == 30.0
    assert config.heartbeat_interval_s == 10.0
    assert config.state_dir == home / ".local/state/fleetpulse-agent/a1"
    assert config.collectors is None


def test_empty_values_mean_defaults(tmp_path: Path, home: Path) -> None:
    text = "server:\n  address:\n  tls:\nagent:\n  id: a1\n  collect_interval:\n  collectors:\n"
    config = load_config(write(tmp_path, text), env={})

    assert config.server_address == "localhost:9090"
    assert config.server_tls is False
    assert config.collect_interval_s == 30.0
    assert config.collectors is None


def test_every_key(tmp_path: Path) -> None:
    ca_file = write(tmp_path, "not really a certificate", name="ca.pem")
    text = f"""\
server:
  address: ingest.example.com:443
  tls: true
  enrollment_token: from-file
  tls_ca_file: {ca_file}
agent:
  id: web-17
  collect_interval: 2.5
  heartbeat_interval: 5
  state_dir: {tmp_path / "state"}
  collectors: [cpu, memory]
"""
    config = load_config(write(tmp_path, text), env={"FLEETPULSE_ENROLLMENT_TOKEN": "from-env"})

    assert config == AgentConfig(
        server_address="ingest.example.com:443",
        server_tls=True,
        enrollment_token="from-file",
        tls_ca_file=str(ca_file),
        agent_id="web-17",
        collect_interval_s=2.5,
        heartbeat_interval_s=5.0,
        state_dir=tmp_path / "state",
        collectors=frozenset({"cpu", "memory"}),
    )


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ORIGIN_EXAMPLE), env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.agent_id = "other"  # type: ignore[misc, unused-ignore]


def test_state_dir_expands_home(tmp_path: Path, home: Path) -> None:
    text = "agent:\n  id: a1\n  state_dir: ~/agent-state\n"
    assert load_config(write(tmp_path, text), env={}).state_dir == home / "agent-state"


def test_accepts_a_str_path(tmp_path: Path) -> None:
    assert load_config(str(write(tmp_path, ORIGIN_EXAMPLE)), env={}).agent_id == "agent-001"


def test_enrollment_token_from_env(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGIN_EXAMPLE)
    env = {"FLEETPULSE_ENROLLMENT_TOKEN": "s3cret"}
    assert load_config(path, env=env).enrollment_token == "s3cret"


def test_empty_env_token_counts_as_unset(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGIN_EXAMPLE)
    assert load_config(path, env={"FLEETPULSE_ENROLLMENT_TOKEN": ""}).enrollment_token is None


def test_env_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETPULSE_ENROLLMENT_TOKEN", "from-os-environ")
    assert load_config(write(tmp_path, ORIGIN_EXAMPLE)).enrollment_token == "from-os-environ"


def test_bad_enrollment_token_is_not_echoed(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  enrollment_token: 123456789\nagent:\n  id: a1\n")
    message = config_error(path)
    assert "server.enrollment_token" in message
    assert "123456789" not in message


def test_collectors_subset(tmp_path: Path) -> None:
    path = write(tmp_path, "agent:\n  id: a1\n  collectors: [load, network, load]\n")
    assert load_config(path, env={}).collectors == frozenset({"load", "network"})


def test_collector_intervals_lay_over_the_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "agent:\n  id: a1\n"), env={}).collector_intervals_s == {
        "tcp": 60.0
    }
    path = write(tmp_path, "agent:\n  id: a1\n  collector_intervals: {tcp: 0, disk: 300}\n")
    assert load_config(path, env={}).collector_intervals_s == {"tcp": 0.0, "disk": 300.0}


def test_plaintext_to_another_host_needs_tls_false_written_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Loopback in any spelling: plaintext is the default, nothing crosses a network.
    for address in ("localhost:9090", "127.0.0.1:9090", "[::1]:9090", "127.0.0.2:1"):
        path = write(tmp_path, f"server:\n  address: '{address}'\nagent:\n  id: a1\n")
        assert load_config(path, env={}).server_tls is False, address
    # Another host without a word about TLS: refused, saying both ways out.
    for address in ("fleet.example.com:9090", "10.0.0.5:9090", "[2001:db8::1]:9090"):
        path = write(tmp_path, f"server:\n  address: '{address}'\nagent:\n  id: a1\n")
        message = config_error(path)
        assert "is not this host: connect with TLS" in message and "server.tls: false" in message
    # tls: false written out: taken, with one warning line.
    path = write(tmp_path, "server:\n  address: ingest:9090\n  tls: false\nagent:\n  id: a1\n")
    with caplog.at_level(logging.WARNING, logger="fleetpulse.agent.config"):
        assert load_config(path, env={}).server_tls is False
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "cross the network in clear" in warning and "\n" not in warning


def test_tags_are_text_and_follow_the_rules_of_a_tag(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "agent:\n  id: a1\n"), env={}).tags == {}
    path = write(tmp_path, "agent:\n  id: a1\n  tags: {env: prod, tier: 2, canary: true}\n")
    assert load_config(path, env={}).tags == {"env": "prod", "tier": "2", "canary": "true"}
    for tags, problem in (
        ("[env]", "agent.tags must be a mapping"),
        ("{on: x}", "is not text"),  # YAML 1.1 reads `on` as true
        ("{os: x}", "agent's own fields"),
        ("{bad-key: x}", "label name"),
        ("{env: [a]}", "agent.tags.env: must be text"),
    ):
        message = config_error(write(tmp_path, f"agent:\n  id: a1\n  tags: {tags}\n"))
        assert problem in message, (tags, message)


def test_unknown_collectors_are_named_with_the_valid_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "agent:\n  id: a1\n  collectors: [cpu, gpu, temperature]\n")
    message = config_error(path)

    assert "agent.collectors" in message
    assert "gpu" in message
    assert "temperature" in message
    for name in COLLECTORS:
        assert name in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "missing required key agent.id"),
        ("server:\n  tls: false\n", "missing required key agent.id"),
        ("agent:\n  collect_interval: 30\n", "missing required key agent.id"),
        ('agent:\n  id: ""\n', "agent.id must be a non-empty string, got ''"),
        ("agent:\n  id: 007\n", "agent.id must be a non-empty string, got 7"),
        ("agent:\n  id: [a, b]\n", "agent.id must be a non-empty string"),
        (
            "agent:\n  id: a1\n  collect_interval: abc\n",
            "agent.collect_interval must be a positive number of seconds, got 'abc'",
        ),
        ("agent:\n  id: a1\n  collect_interval: 0\n", "agent.collect_interval must be a positive"),
        ("agent:\n  id: a1\n  collect_interval: -5\n", "agent.collect_interval must be a positive"),
        ("agent:\n  id: a1\n  collect_interval: true\n", "agent.collect_interval must be a pos"),
        ("agent:\n  id: a1\n  collect_interval: .nan\n", "agent.collect_interval must be a pos"),
        ("agent:\n  id: a1\n  collect_interval: .inf\n", "agent.collect_interval must be a pos"),
        ('agent:\n  id: a1\n  collect_interval: "30"\n', "agent.collect_interval must be a pos"),
        ("agent:\n  id: a1\n  heartbeat_interval: 0\n", "agent.heartbeat_interval must be a pos"),
        ('server:\n  tls: "false"\nagent:\n  id: a1\n', "server.tls must be true or false"),
        ('server:\n  address: ""\nagent:\n  id: a1\n', "server.address must be a non-empty"),
        ("server:\n  address: 9090\nagent:\n  id: a1\n", "server.address must be a non-empty"),
        ("server:\n  tls_ca_file: 5\nagent:\n  id: a1\n", "server.tls_ca_file must be a non-emp"),
        ("agent:\n  id: a1\n  state_dir: 5\n", "agent.state_dir must be a non-empty string"),
        ("agent:\n  id: a1\n  collectors: cpu\n", "agent.collectors must be a list"),
        ("agent:\n  id: a1\n  collectors: [1, 2]\n", "agent.collectors must be a list"),
        (
            "agent:\n  id: a1\n  collector_intervals: [tcp]\n",
            "agent.collector_intervals must map collector names to seconds",
        ),
        (
            "agent:\n  id: a1\n  collector_intervals: {gpu: 5}\n",
            "agent.collector_intervals names unknown collector 'gpu'",
        ),
        (
            "agent:\n  id: a1\n  collector_intervals: {tcp: -1}\n",
            "agent.collector_intervals.tcp must be 0 or more seconds, got -1",
        ),
        (
            'agent:\n  id: a1\n  collector_intervals: {tcp: "60"}\n',
            "agent.collector_intervals.tcp must be a number of seconds, got '60'",
        ),
        ("- server\n- agent\n", "top level must be a mapping"),
        ("just a string\n", "top level must be a mapping"),
        ("server: localhost:9090\nagent:\n  id: a1\n", "server must be a mapping, got str"),
        ("agent: [a1]\n", "agent must be a mapping, got list"),
        ("agent:\n  id: a/b\n", "agent.id 'a/b' cannot name the default state directory"),
        ("agent:\n  id: ..\n", "agent.id '..' cannot name the default state directory"),
    ],
)
def test_invalid_config_is_one_line_naming_the_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    assert expected in config_error(write(tmp_path, text))


def test_id_with_a_slash_is_fine_with_an_explicit_state_dir(tmp_path: Path) -> None:
    text = f"agent:\n  id: rack1/web-17\n  state_dir: {tmp_path / 'state'}\n"
    assert load_config(write(tmp_path, text), env={}).agent_id == "rack1/web-17"


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    text = 'server:\n  address: "localhost:9090"\n  tls: [false\nagent:\n  id: a1\n'
    message = config_error(write(tmp_path, text))
    assert "not valid YAML (line " in message


def test_invalid_yaml_line_number(tmp_path: Path) -> None:
    text = "agent:\n  id: a1\n  collect_interval: 30\n bad: indent\n"
    assert "not valid YAML (line 4)" in config_error(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    message = config_error(tmp_path / "agent.yaml")
    assert "cannot read file: [Errno 2]" in message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert "cannot read file" in config_error(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_bytes(b"agent:\n  id: \xff\xfe\n")
    assert "cannot read file: not UTF-8" in config_error(path)


def test_message_uses_the_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "agent:\n  collect_interval: 30\n")
    with pytest.raises(ConfigError, match=r"^agent\.yaml: missing required key agent\.id$"):
        load_config("agent.yaml", env={})


def test_missing_tls_ca_file_fails_at_load(tmp_path: Path) -> None:
    text = f"server:\n  tls: true\n  tls_ca_file: {tmp_path / 'nope.pem'}\nagent:\n  id: a1\n"
    message = config_error(write(tmp_path, text))
    assert "server.tls_ca_file" in message
    assert "nope.pem" in message


def test_tls_ca_file_without_tls_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = "server:\n  tls_ca_file: /nonexistent/ca.pem\nagent:\n  id: a1\n"
    with caplog.at_level(logging.WARNING, logger="fleetpulse.agent.config"):
        config = load_config(write(tmp_path, text), env={})
    assert config.tls_ca_file == "/nonexistent/ca.pem"
    assert "server.tls_ca_file is ignored" in caplog.text


def test_unknown_keys_are_ignored_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = ORIGIN_EXAMPLE + "  gpu: true\nlogging:\n  level: debug\n"
    text = text.replace("  tls: false\n", "  tls: false\n  compression: zstd\n")
    with caplog.at_level(logging.WARNING, logger="fleetpulse.agent.config"):
        config = load_config(write(tmp_path, text), env={})

    assert config.agent_id == "agent-001"
    messages = [record.getMessage() for record in caplog.records]
    assert any("logging" in message for message in messages)
    assert any("server.compression" in message for message in messages)
    assert any("agent.gpu" in message for message in messages)
    assert all(record.levelno == logging.WARNING for record in caplog.records)


def test_config_error_exits_with_status_2(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml", env={})
    assert info.value.exit_status == 2


def test_agent_modules_import_no_server_dependencies() -> None:
    code = (
        "import fleetpulse.agent.config, fleetpulse.agent.collectors.scheduler, sys; "
        "bad=[m for m in sys.modules if m.split('.')[0] in "
        "{'psycopg','redis','polars','fastapi','pydantic','numpy'}]; assert not bad, bad"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_example_config_loads_and_documents_the_default_state_dir(
    repo_root: Path, home: Path
) -> None:
    example = repo_root / "agent" / "agent.example.yaml"
    config = load_config(example, env={})
    assert config.agent_id == "web-042"
    assert config.state_dir == home / ".local/state/fleetpulse-agent/web-042"
    text = example.read_text()
    assert "~/.local/state/fleetpulse-agent/<agent.id>" in text
    assert "FLEETPULSE_ENROLLMENT_TOKEN" in text
    # the state_dir it suggests for the systemd unit is accepted when uncommented
    uncommented = text.replace("# state_dir:", "state_dir:")
    assert load_config(write(home, uncommented), env={}).state_dir == Path(
        "/var/lib/fleetpulse-agent"
    )
