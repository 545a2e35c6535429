"""The two pieces of the protobuf wire format that the agent and the bench encoder write by hand
(the agent's batch around a cached SeriesSet, the simulator's batch templates)."""

from __future__ import annotations

WIRE_VARINT, WIRE_LEN = 0, 2


def varint(value: int) -> bytes:
    """A non-negative integer as a base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    """A varint field (wire type 0): tag, value."""
    return varint(number << 3 | WIRE_VARINT) + varint(value)


def field_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2: string, bytes, packed values, sub-message)."""
    return varint(number << 3 | WIRE_LEN) + varint(len(payload)) + payload
