"""Regenerate the checked-in Python code from the .proto files in this folder.

    python -m fleetpulse.proto.generate          # rewrite the generated modules in place
    python -m fleetpulse.proto.generate --check  # exit 1 if they are stale

The .proto files keep the original plan's layout (``package proto``, ``import "proto/common.proto"``),
so protoc runs with the repository root as include path. protoc then emits ``from proto import ...``;
those imports are rewritten to ``fleetpulse.proto`` because a bare top-level ``proto`` package belongs
to proto-plus (installed by every Google Cloud client) and must never be shadowed.
Needs grpcio-tools (the ``dev`` extra); the version is pinned there so output is reproducible.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILES = ("common.proto", "metric.proto", "agent.proto", "edge.proto", "remotewrite.proto")
_BARE_IMPORT = re.compile(r"^from proto import ", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc into ``out_dir`` and return the generated files, imports already rewritten."""
    from grpc_tools import protoc  # dev-only dependency

    include_root = PROTO_DIR.parent
    proto_include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as raw:
        args = [
            "grpc_tools.protoc",
            f"-I{include_root}",
            f"-I{proto_include}",
            f"--python_out={raw}",
            f"--pyi_out={raw}",
            f"--grpc_python_out={raw}",
            *(str(PROTO_DIR / name) for name in PROTO_FILES),
        ]
        # protoc resolves files relative to an include root, so they must sit under <root>/proto/.
        if PROTO_DIR.name != "proto":
            raise SystemExit(f"expected the .proto files in a folder named proto, got {PROTO_DIR}")
        status = protoc.main(args)
        if status != 0:
            raise SystemExit(f"protoc failed with status {status}")
        written = []
        for src in sorted((Path(raw) / "proto").glob("*.py*")):
            text = src.read_text()
            if src.name.endswith("_pb2_grpc.py") and "class " not in text:
                continue  # protoc emits an empty module for files without a service
            dst = out_dir / src.name
            dst.write_text(_BARE_IMPORT.sub("from fleetpulse.proto import ", text))
            written.append(dst)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale generated files")
    args = parser.parse_args(argv)
    if not args.check:
        for path in generate(PROTO_DIR):
            print(f"wrote {path.relative_to(PROTO_DIR.parent)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stale = [
            path.name
            for path in generate(Path(tmp))
            if not (PROTO_DIR / path.name).exists()
            or (PROTO_DIR / path.name).read_text() != path.read_text()
        ]
    if stale:
        print(
            "stale generated code: "
            + ", ".join(stale)
            + " (run python -m fleetpulse.proto.generate)"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
