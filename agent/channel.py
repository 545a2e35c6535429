"""The agent's gRPC channel to the platform: its options and, with TLS, its credentials."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import grpc

from fleetpulse.agent.config import AgentConfig

# One stream carrying a batch every collect interval needs neither of these: HTTP/2 BDP probing
# (a ping round trip whenever data arrives, to grow the flow-control window for bulk transfers)
# and gRPC's own retries (which buffer every message sent; the spool already replays). Without
# the BDP pings the agent spends about 1.3 ms less CPU per batch round trip on the 2-core
# development VM (docs/performance.md).
OPTIONS = (("grpc.http2.bdp_probe", 0), ("grpc.enable_retries", 0))


def system_ca_bundle() -> bytes | None:
    """The host's CA certificates, as OpenSSL finds them (SSL_CERT_FILE, then the distribution's
    bundle); None leaves gRPC with the roots it ships."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            return Path(candidate).read_bytes()
    return None


def credentials(config: AgentConfig) -> grpc.ChannelCredentials:
    """TLS to the platform: the configured CA file or the system's CAs, and a client certificate
    when one is configured (read at every connect, so a renewed certificate needs no restart)."""
    roots = Path(config.tls_ca_file).read_bytes() if config.tls_ca_file else system_ca_bundle()
    key = cert = None
    if config.tls_cert_file and config.tls_key_file:
        key = Path(config.tls_key_file).read_bytes()
        cert = Path(config.tls_cert_file).read_bytes()
    return grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=key, certificate_chain=cert
    )
