"""Free loopback ports for the platform a benchmark starts."""

from __future__ import annotations

import random
import socket

# Linux's default ephemeral range starts here: a port below it is never an outgoing connection's.
_EPHEMERAL_START = 32768


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports (a process per port: `--processes N`). Chosen
    below the ephemeral range: one found by binding port 0 is in it, and an outgoing connection
    may take its neighbour between this check and the platform's bind."""
    for _ in range(200):
        base = random.randint(20_000, _EPHEMERAL_START - count)
        if all(_bindable(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")
