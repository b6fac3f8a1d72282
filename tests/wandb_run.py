"""Reads what an offline W&B run recorded, from its ``run-<id>.wandb`` file.

The file is W&B's transaction log: a 7-byte header (``:W&B``, a 2-byte key, a version byte) and then
LevelDB's log format, 32 KiB blocks of chunks, each ``crc32 (4) | length (2, LE) | type (1) | data``,
where a record is one FULL chunk or FIRST, MIDDLE..., LAST. Each record is a protobuf ``Record``.
"""

from __future__ import annotations

import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK, HEADER, CHUNK_HEADER = 32 * 1024, 7, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[pb.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, pos, pending = [], HEADER, b""
    while pos + CHUNK_HEADER <= len(data):
        if BLOCK - pos % BLOCK < CHUNK_HEADER:  # block trailer too short for a chunk: zero padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def history_keys(path: Path) -> set[str]:
    """Every metric key logged to the run's history."""
    return {
        item.key or "/".join(item.nested_key)
        for record in records(path)
        if record.WhichOneof("record_type") == "history"
        for item in record.history.item
    }


def config_keys(path: Path) -> set[str]:
    """Every top-level key of the run's config."""
    return {
        item.key or item.nested_key[0]
        for record in records(path)
        if record.WhichOneof("record_type") == "config"
        for item in record.config.update
    }
