"""An agent built from the original plan's three .proto files alone, as a third party would.

protoc generates Python code from ``tests/origin_proto`` (verbatim copies of the originals) into a
temporary folder, and a client runs in a clean interpreter whose only protocol code is that: it
never imports fleetpulse. It registers, sends two heartbeats and prints each answer; a stream the
platform ends is printed as ``end:<status code>`` (its details on stderr), with exit status 3.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_CLIENT = """
import sys, time
import grpc
from proto import agent_pb2, agent_pb2_grpc, common_pb2

# the protocol code in use is the one generated from the originals, not the project's
assert agent_pb2.__file__.startswith(sys.path[0]) or "origin_gen" in agent_pb2.__file__, agent_pb2.__file__

def messages():
    yield agent_pb2.AgentMessage(register=agent_pb2.AgentRegister(
        agent_id=AGENT_ID, hostname="origin-host", ip="10.0.0.1", os="linux", arch="amd64", version="go-0.1"))
    for _ in range(2):
        time.sleep(0.05)
        yield agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(
            agent_id=AGENT_ID, timestamp=common_pb2.Timestamp(seconds=int(time.time()))))

address, token, AGENT_ID = sys.argv[1], sys.argv[2], sys.argv[3]
with grpc.insecure_channel(address) as channel:
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    try:
        for response in stub.Connect(messages(), metadata=(("authorization", "Bearer " + token),), timeout=20):
            kind = response.WhichOneof("message")
            print(f"{kind}:{getattr(response, kind).success}")
    except grpc.RpcError as exc:  # refused: say how, and fail
        print(f"end:{exc.code().name}")
        print(exc.details(), file=sys.stderr)
        sys.exit(3)
assert not any(name.startswith("fleetpulse") for name in sys.modules)
"""


def run_origin_agent(
    repo_root: Path, address: str, token: str, tmp_path: Path, agent_id: str = "agent-001"
) -> subprocess.CompletedProcess[str]:
    origin = repo_root / "tests" / "origin_proto"
    out = tmp_path / "origin_gen"
    out.mkdir(exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{origin}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *(str(p) for p in sorted((origin / "proto").glob("*.proto"))),
        ],
        check=True,
    )
    client = out / "origin_client.py"
    client.write_text(_CLIENT)
    return subprocess.run(
        [sys.executable, str(client), address, token, agent_id],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(out), "PATH": "/usr/bin:/bin"},
    )
