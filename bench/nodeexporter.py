"""Debian's prometheus-node-exporter on a loopback port, scraped as Prometheus does: the anchor
the agent's footprint is measured against (``bench agent``) and a second source of real host data
for the storage layouts (``bench layouts --source node_exporter``)."""

from __future__ import annotations

import subprocess
import time
import urllib.request

import psutil

from fleetpulse.bench.ports import free_port

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"


class NodeExporter:
    """A node_exporter process of our own, answering on ``url`` once constructed."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.proc = subprocess.Popen(
            [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.series = 0
        deadline = time.monotonic() + 15
        while True:
            try:
                self.scrape()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.2)
        self.ps = psutil.Process(self.proc.pid)

    def scrape(self) -> str:
        """One scrape's exposition text; counts its series in ``series``."""
        body: str = urllib.request.urlopen(self.url, timeout=10).read().decode()
        self.series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
        return body

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
