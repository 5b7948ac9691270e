"""Protocol Buffers wire encoding for the few Flight and Flight SQL messages amp uses.

Why hand-written: amp needs six small messages (FlightDescriptor, FlightInfo,
FlightEndpoint, Ticket, FlightData, and the Flight SQL ``CommandStatementQuery``
wrapped in ``google.protobuf.Any``). Encoding them directly keeps the dev server
independent of generated code and lets it put Arrow IPC buffers on the wire without
an intermediate copy into protobuf objects.
"""

from __future__ import annotations

from collections.abc import Iterator

COMMAND_STATEMENT_QUERY_TYPE_URL = (
    "type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"
)

_VARINT = 0
_LEN = 2
_I64 = 1
_I32 = 5

DESCRIPTOR_TYPE_CMD = 2


class WireError(ValueError):
    """A message could not be decoded: the bytes do not follow the protobuf wire format."""


class UnsupportedCommand(WireError):
    """A well-formed ``Any`` command other than CommandStatementQuery (``type_url`` names it).

    Why its own type: a real Amp server answers such a command, e.g. Flight SQL's
    ``CommandGetTables``, with INVALID_ARGUMENT ``unsupported flight descriptor command:
    <type URL>``, and the dev server says the same.
    """

    def __init__(self, type_url: str) -> None:
        super().__init__(f"unsupported flight descriptor command: {type_url}")
        self.type_url = type_url


def encode_varint(value: int) -> bytes:
    """Encode an int as a protobuf varint; negatives use 64-bit two's complement."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _decode_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint longer than 64 bits")


def _key(field: int, wire_type: int) -> bytes:
    return encode_varint((field << 3) | wire_type)


def encode_bytes_field(field: int, value: bytes) -> bytes:
    return _key(field, _LEN) + encode_varint(len(value)) + value


def encode_int_field(field: int, value: int) -> bytes:
    return _key(field, _VARINT) + encode_varint(value)


def iter_fields(data: bytes | memoryview) -> Iterator[tuple[int, int | bytes]]:
    """Yield ``(field_number, value)``: ints for varint fields, bytes for the rest."""
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        key, pos = _decode_varint(view, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, pos = _decode_varint(view, pos)
            yield field, value
        elif wire_type == _LEN:
            length, pos = _decode_varint(view, pos)
            if pos + length > len(view):
                raise WireError("truncated length-delimited field")
            yield field, bytes(view[pos : pos + length])
            pos += length
        elif wire_type == _I64:
            yield field, bytes(view[pos : pos + 8])
            pos += 8
        elif wire_type == _I32:
            yield field, bytes(view[pos : pos + 4])
            pos += 4
        else:
            raise WireError(f"unsupported wire type {wire_type}")


def encode_statement_query(sql: str) -> bytes:
    """``Any{CommandStatementQuery{query}}`` as the bytes of a CMD FlightDescriptor."""
    command = encode_bytes_field(1, sql.encode("utf-8"))
    return encode_bytes_field(1, COMMAND_STATEMENT_QUERY_TYPE_URL.encode()) + encode_bytes_field(
        2, command
    )


def decode_statement_query(command: bytes) -> str:
    """The SQL text of an ``Any``-wrapped CommandStatementQuery; WireError otherwise."""
    type_url = b""
    value = b""
    for field, content in iter_fields(command):
        if field == 1 and isinstance(content, bytes):
            type_url = content
        elif field == 2 and isinstance(content, bytes):
            value = content
    if type_url.decode("utf-8", "replace") != COMMAND_STATEMENT_QUERY_TYPE_URL:
        raise UnsupportedCommand(type_url.decode("utf-8", "replace"))
    for field, content in iter_fields(value):
        if field == 1 and isinstance(content, bytes):
            return content.decode("utf-8")
    return ""


def decode_descriptor_command(descriptor: bytes) -> bytes:
    """The ``cmd`` of a FlightDescriptor; WireError when it is not a CMD descriptor."""
    descriptor_type = 0
    cmd = b""
    for field, content in iter_fields(descriptor):
        if field == 1 and isinstance(content, int):
            descriptor_type = content
        elif field == 2 and isinstance(content, bytes):
            cmd = content
    if descriptor_type != DESCRIPTOR_TYPE_CMD:
        raise WireError("expected a FlightDescriptor of type CMD")
    return cmd


def decode_ticket(ticket: bytes) -> bytes:
    for field, content in iter_fields(ticket):
        if field == 1 and isinstance(content, bytes):
            return content
    return b""


def encode_flight_info(
    schema_ipc: bytes,
    descriptor: bytes,
    ticket: bytes,
    total_records: int = -1,
    total_bytes: int = -1,
) -> bytes:
    """FlightInfo with one endpoint holding an opaque ticket and no location."""
    endpoint = encode_bytes_field(1, encode_bytes_field(1, ticket))
    return (
        encode_bytes_field(1, schema_ipc)
        + encode_bytes_field(2, descriptor)
        + encode_bytes_field(3, endpoint)
        + encode_int_field(4, total_records)
        + encode_int_field(5, total_bytes)
    )


def encode_flight_data(
    header: bytes, body: bytes | memoryview = b"", app_metadata: bytes = b""
) -> bytes:
    """FlightData: the IPC message header (flatbuffer), app_metadata and the IPC body."""
    parts: list[bytes | memoryview] = [encode_bytes_field(2, header)]
    if app_metadata:
        parts.append(encode_bytes_field(3, app_metadata))
    if len(body):
        parts.append(_key(1000, _LEN) + encode_varint(len(body)))
        parts.append(memoryview(body))  # joined straight from the Arrow buffer: one copy
    return b"".join(parts)
