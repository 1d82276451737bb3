"""Read an offline W&B run file (`run-<id>.wandb`) back: for tests and for checking what was logged.

The format is wandb's internal, undocumented one (pinned: wandb 0.31): a 7-byte header (":W&B", 0xBEE1,
version), then 32 KiB blocks of records, each with a 7-byte header (crc32, length, type FULL/FIRST/
MIDDLE/LAST) around a serialized `wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    records, pending, offset = [], b"", HEADER
    while offset + HEADER <= len(data):
        room = BLOCK - offset % BLOCK
        if room < HEADER:  # a block's tail too short for a header is padding
            offset += room
            continue
        _, length, kind = struct.unpack("<IHB", data[offset:offset + HEADER])
        payload = data[offset + HEADER: offset + HEADER + length]
        offset += HEADER + length
        if kind == 0 and length == 0:
            offset += BLOCK - offset % BLOCK if offset % BLOCK else 0
            continue
        if kind in (FULL, FIRST):
            pending = payload
        else:
            pending += payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def summarize(path: str | Path) -> dict[str, Any]:
    """group, job_type, config, every history row, the summary, and whether the exit record is there."""
    out: dict[str, Any] = {"config": {}, "history": [], "summary": {}, "exited": False}
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.update(group=record.run.run_group, job_type=record.run.job_type, project=record.run.project,
                       name=record.run.display_name)
            out["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            out["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "exit":
            out["exited"] = True
    return out
