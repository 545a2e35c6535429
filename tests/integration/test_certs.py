"""TLS from the first agent (issue 18, point 7): `fleetpulse certs init` makes a CA and the
front-end's certificate, a real front-end serves them, and a real agent configured from YAML trusts
that CA and gets its batches acked; an agent aimed at another host in plaintext is refused."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509

from fleetpulse.agent.config import load_config
from tests.integration.conftest import TOKEN, ingest_env
from tests.integration.test_agent import account, wait_for
from tests.integration.test_agent_settings import Running
from tests.processes import fleetpulse_process, free_port, wait_for_port


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetpulse", *args], capture_output=True, text=True, timeout=60
    )


def test_certs_init_then_an_agent_speaks_tls_to_the_front_end(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    made = cli("certs", "init", "--dir", str(certs), "--name", "localhost", "--name", "127.0.0.1")
    assert made.returncode == 0, made.stderr
    for key in ("ca-key.pem", "server-key.pem"):
        assert stat.S_IMODE((certs / key).stat().st_mode) == 0o600, key
    server = x509.load_pem_x509_certificate((certs / "server.pem").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # A second init keeps the CA agents trust: refused, or kept with --if-absent.
    again = cli("certs", "init", "--dir", str(certs), "--name", "localhost")
    assert again.returncode == 2 and "already holds" in again.stderr
    kept = cli("certs", "init", "--dir", str(certs), "--name", "x", "--if-absent")
    assert kept.returncode == 0
    assert x509.load_pem_x509_certificate((certs / "server.pem").read_bytes()) == server

    port = free_port()
    env = ingest_env(database_url, redis_url, port, shards=1)
    env["FLEETPULSE_GRPC_TLS_CERT_FILE"] = str(certs / "server.pem")
    env["FLEETPULSE_GRPC_TLS_KEY_FILE"] = str(certs / "server-key.pem")
    config_file = tmp_path / "agent.yaml"
    config_file.write_text(
        f"server:\n  address: localhost:{port}\n  tls: true\n  tls_ca_file: {certs / 'ca.pem'}\n"
        f"  enrollment_token: {TOKEN}\n"
        f"agent:\n  id: tls-agent\n  collect_interval: 0.2\n  heartbeat_interval: 0.5\n"
        f"  state_dir: {tmp_path / 'state'}\n  collectors: [load]\n"
    )
    with fleetpulse_process(["ingest"], env, tmp_path / "ingest.log") as proc:
        wait_for_port(port, proc)
        with Running(load_config(config_file, env={})) as daemon:
            wait_for(lambda: account(daemon) and account(daemon).batches_acked >= 2, 20, "acks")
            assert daemon.credential_path.exists()  # enrolled over TLS


def test_an_agent_aimed_at_another_host_in_plaintext_is_refused(tmp_path: Path) -> None:
    config_file = tmp_path / "agent.yaml"
    config_file.write_text("server:\n  address: fleet.example.com:9090\nagent:\n  id: a1\n")
    refused = cli("agent", "--config", str(config_file))
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert "is not this host: connect with TLS" in line and "server.tls: false" in line
