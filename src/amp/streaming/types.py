"""Typed protocol values: block ranges and the app_metadata of FlightData messages.

Why typed: every decision amp makes (commit, checkpoint, reorg, resume) is a decision
about block ranges, so they are parsed once, at the edge, into frozen values.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any


class MetadataError(ValueError):
    """app_metadata that does not follow protocol §2."""


# A block hash on the wire: "0x" and the 32 bytes in hex (protocol §2).
_WIRE_HASH = re.compile(r"0x[0-9a-fA-F]{64}")


def _wire_hash(data: dict[str, Any], key: str, required: bool) -> str | None:
    """The ``key`` hash of a wire range, lower-cased so that equal hashes compare equal;
    ``prev_hash`` may be null or absent (older servers), ``hash`` may not."""
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not _WIRE_HASH.fullmatch(value):
        raise MetadataError(
            f"block range {key} must be a string of '0x' and 64 hex digits, got {value!r}"
        )
    return value.lower()


@dataclass(frozen=True, slots=True)
class BlockRange:
    """Blocks ``start..end`` (inclusive) of one network; ``hash`` is block ``end``'s hash,
    ``prev_hash`` the parent hash of block ``start`` (``0x``-prefixed hex, or None)."""

    network: str
    start: int
    end: int
    hash: str | None = None
    prev_hash: str | None = None
    timestamp: int | None = None

    def to_wire(self) -> dict[str, Any]:
        """The protocol's form: ``numbers: {start, end}``."""
        wire: dict[str, Any] = {
            "network": self.network,
            "numbers": {"start": self.start, "end": self.end},
            "hash": self.hash,
            "prev_hash": self.prev_hash,
        }
        if self.timestamp is not None:
            wire["timestamp"] = self.timestamp
        return wire

    def to_dict(self) -> dict[str, Any]:
        """The flat form kept in checkpoints: ``start``/``end`` at the top level."""
        flat: dict[str, Any] = {
            "network": self.network,
            "start": self.start,
            "end": self.end,
            "hash": self.hash,
            "prev_hash": self.prev_hash,
        }
        if self.timestamp is not None:
            flat["timestamp"] = self.timestamp
        return flat

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlockRange:
        """Accepts both the wire form (``numbers``) and the flat form; ignores unknown keys."""
        try:
            numbers = data.get("numbers", data)
            start, end = numbers["start"], numbers["end"]
            network = data["network"]
        except (KeyError, TypeError, AttributeError) as exc:
            raise MetadataError(f"block range without network/start/end: {data!r}") from exc
        if not isinstance(network, str) or type(start) is not int or type(end) is not int:
            raise MetadataError(f"block range with ill-typed network/start/end: {data!r}")
        if start > end or start < 0:
            raise MetadataError(f"block range with start {start} > end {end} or negative")
        for key in ("hash", "prev_hash"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise MetadataError(f"block range {key} is not a string: {data!r}")
        timestamp = data.get("timestamp")
        return cls(
            network=network,
            start=start,
            end=end,
            hash=data.get("hash"),
            prev_hash=data.get("prev_hash"),
            timestamp=timestamp if type(timestamp) is int else None,
        )

    @classmethod
    def from_wire(cls, data: Any) -> BlockRange:
        """A range of app_metadata: ``from_dict`` plus the wire's stricter rules, a
        non-empty network and hashes of the form ``0x`` + 64 hex digits (§2)."""
        if not isinstance(data, dict):
            raise MetadataError(f"a block range is not an object: {data!r}")
        parsed = cls.from_dict(data)
        if not parsed.network:
            raise MetadataError(f"block range with an empty network: {data!r}")
        return cls(
            network=parsed.network,
            start=parsed.start,
            end=parsed.end,
            hash=_wire_hash(data, "hash", required=True),
            prev_hash=_wire_hash(data, "prev_hash", required=False),
            timestamp=parsed.timestamp,
        )


@dataclass(frozen=True, slots=True)
class BatchMetadata:
    """The app_metadata of one FlightData message."""

    ranges: tuple[BlockRange, ...]
    ranges_complete: bool

    def to_json_bytes(self) -> bytes:
        return json.dumps(
            {"ranges": [r.to_wire() for r in self.ranges], "ranges_complete": self.ranges_complete},
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json_bytes(cls, raw: bytes) -> BatchMetadata:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MetadataError(f"app_metadata is not JSON: {raw[:200]!r}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("ranges", []), list):
            raise MetadataError(f"app_metadata is not an object with a ranges list: {data!r}")
        complete = data.get("ranges_complete", False)
        if not isinstance(complete, bool):
            raise MetadataError(f"ranges_complete is not a boolean: {complete!r}")
        return cls(tuple(BlockRange.from_wire(r) for r in data.get("ranges", [])), complete)


def hex_hash(raw: bytes) -> str:
    return "0x" + raw.hex()
