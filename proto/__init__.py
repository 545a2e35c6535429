"""Wire protocol: the .proto files of this folder and the Python code generated from them.

Regenerate with ``python -m fleetpulse.proto.generate``. The generated modules import each other as
``fleetpulse.proto.*``; nothing here is importable as a bare ``proto`` package.
"""
