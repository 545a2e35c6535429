"""Protobuf wire format by hand: to encode what no protobuf library would (a repeated map key,
invalid UTF-8 in a string field) and to find the fields of an encoding the fuzzer mutates."""

from __future__ import annotations

from dataclasses import dataclass

WIRE_VARINT, WIRE_I64, WIRE_LEN, WIRE_I32 = 0, 1, 2, 5


def varint(value: int) -> bytes:
    """Base-128 varint (a negative int64 is sent as its 2^64 complement; a value of 2^64 or more
    gives an over-long varint, which the fuzzer wants too)."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire: int) -> bytes:
    return varint((number << 3) | wire)


def field_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, sub-message)."""
    return tag(number, WIRE_LEN) + varint(len(payload)) + payload


def field_varint(number: int, value: int) -> bytes:
    return tag(number, WIRE_VARINT) + varint(value)


def map_entry(number: int, key: bytes, value: bytes) -> bytes:
    """One entry of a map<string, string> field: a sub-message {1: key, 2: value}."""
    return field_bytes(number, field_bytes(1, key) + field_bytes(2, value))


def read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int] | None:
    value = shift = 0
    while pos < end and shift < 70:
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None


@dataclass(frozen=True)
class Field:
    """Where one field sits in an encoding (half-open byte ranges)."""

    number: int
    wire: int
    key: tuple[int, int]  # the tag
    value: tuple[int, int]  # the varint, the fixed bytes, or the payload of a LEN field
    length: tuple[int, int] | None = None  # the length prefix of a LEN field


def walk(
    buf: bytes, start: int = 0, end: int | None = None, depth: int = 0, nested: bool = True
) -> list[Field] | None:
    """Every field of ``buf[start:end]`` and (``nested``), where a LEN payload parses as a
    message, its fields too, depth first. None when the bytes are not a well-formed message."""
    end = len(buf) if end is None else end
    fields: list[Field] = []
    pos = start
    while pos < end:
        key = read_varint(buf, pos, end)
        if key is None or key[0] >> 3 == 0:
            return None
        number, wire, after = key[0] >> 3, key[0] & 7, key[1]
        if wire == WIRE_VARINT:
            value = read_varint(buf, after, end)
            if value is None:
                return None
            fields.append(Field(number, wire, (pos, after), (after, value[1])))
            pos = value[1]
        elif wire in (WIRE_I64, WIRE_I32):
            size = 8 if wire == WIRE_I64 else 4
            if after + size > end:
                return None
            fields.append(Field(number, wire, (pos, after), (after, after + size)))
            pos = after + size
        elif wire == WIRE_LEN:
            length = read_varint(buf, after, end)
            if length is None or length[1] + length[0] > end:
                return None
            payload = (length[1], length[1] + length[0])
            fields.append(Field(number, wire, (pos, after), payload, (after, length[1])))
            if nested and depth < 4 and payload[1] > payload[0]:
                fields.extend(walk(buf, *payload, depth + 1) or ())
            pos = payload[1]
        else:
            return None
    return fields


@dataclass
class Node:
    """A field of a parsed message: mutable, and serialized again with consistent lengths."""

    number: int
    wire: int
    raw: bytes  # the value's bytes (a LEN field: its payload)
    children: list[Node] | None = None  # a LEN payload that parses as a message


def parse(buf: bytes, depth: int = 0) -> list[Node] | None:
    """The fields of ``buf`` as a tree, or None when it is not a well-formed message."""
    flat = walk(buf, nested=False)  # nested payloads are parsed below, into children
    if flat is None:
        return None
    nodes = []
    for f in flat:
        raw = buf[f.value[0] : f.value[1]]
        children = parse(raw, depth + 1) if f.wire == WIRE_LEN and raw and depth < 4 else None
        nodes.append(Node(f.number, f.wire, raw, children))
    return nodes


def serialize(nodes: list[Node]) -> bytes:
    out = bytearray()
    for node in nodes:
        out += tag(node.number, node.wire)
        if node.wire == WIRE_LEN:
            payload = serialize(node.children) if node.children is not None else node.raw
            out += varint(len(payload)) + payload
        else:
            out += node.raw
    return bytes(out)


def every_node(nodes: list[Node]) -> list[tuple[list[Node], int]]:
    """(siblings, index) of every node of the tree, depth first."""
    found: list[tuple[list[Node], int]] = []
    for index, node in enumerate(nodes):
        found.append((nodes, index))
        if node.children is not None:
            found.extend(every_node(node.children))
    return found
