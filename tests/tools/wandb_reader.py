"""Read the history an offline W&B run logged, from its `run-*.wandb` file (wandb 0.31).

The file is a LevelDB-style log: a 7-byte header (b":W&B", magic 0xBEE1 little-endian,
version 0), then 32 KiB blocks of records: crc32 (4 bytes, of type + payload), length
(2 bytes, little-endian), type (1 full, 2 first, 3 middle, 4 last) and payload. A record
never starts in the last 6 bytes of a block (zero padding). A payload is a
`wandb.proto.wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

BLOCK, HEADER = 32 * 1024, 7


def records(path) -> list[bytes]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B" and data[4:7] == b"\xe1\xbe\x00", f"not a wandb log: {data[:7]!r}"
    out, pos, parts = [], HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # the block's tail is padding
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        payload = data[pos + HEADER:pos + HEADER + length]
        assert zlib.crc32(payload, zlib.crc32(bytes([kind]))) == crc, f"bad checksum at byte {pos}"
        pos += HEADER + length
        if kind == 1:
            out.append(payload)
        elif kind in (2, 3):
            parts = (b"" if kind == 2 else parts) + payload
        elif kind == 4:
            out.append(parts + payload)
    return out


def history(path) -> list[dict]:
    """The rows logged with `run.log`, in order, with `_step` and the other keys."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for payload in records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            rows.append({(item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                         for item in record.history.item})
    return rows
