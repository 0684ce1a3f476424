"""Read what an offline W&B run recorded (its ``run-<id>.wandb`` file), to check what ``wandb sync`` would upload.

The file is W&B's 7-byte header (``:W&B``, magic, version) followed by records in LevelDB's log format:
32 KiB blocks, each record chunk a 7-byte header (crc32c, little-endian length, type 1 full / 2 first /
3 middle / 4 last) and its bytes; a block's tail shorter than a header is padding. Each record is a
``wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

_BLOCK = 32 * 1024
_HEADER = 7


def _records(data: bytes):
    offset, pending = 7, b""
    while offset + _HEADER <= len(data):
        block_left = _BLOCK - offset % _BLOCK
        if block_left < _HEADER:
            offset += block_left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset:offset + _HEADER])
        chunk = data[offset + _HEADER:offset + _HEADER + length]
        offset += _HEADER + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""
        else:  # zero padding at the end of a file that is still being written
            return


@dataclass
class OfflineRun:
    group: str = ""
    tags: list[str] = field(default_factory=list)
    name: str = ""
    artifacts: list[dict] = field(default_factory=list)
    """name, type, metadata (JSON text), references (the URIs), files (path in the artifact -> staged copy)."""
    history_keys: set[str] = field(default_factory=set)
    tables: list[str] = field(default_factory=list)
    """History keys whose value is a W&B table."""
    summary: dict[str, str] = field(default_factory=dict)


def read_offline_run(run_dir: Path) -> OfflineRun:
    """What the offline run in ``run_dir`` (``.../offline-run-<time>-<id>``) recorded."""
    from wandb.proto import wandb_internal_pb2 as pb

    run = OfflineRun()
    (path,) = Path(run_dir).glob("run-*.wandb")
    for raw in _records(path.read_bytes()):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.group, run.tags, run.name = record.run.run_group, list(record.run.tags), record.run.display_name
        elif kind == "artifact":
            contents = record.artifact.manifest.contents
            run.artifacts.append({
                "name": record.artifact.name, "type": record.artifact.type, "metadata": record.artifact.metadata,
                "references": [entry.ref for entry in contents if entry.ref],
                # Files the artifact carries (a logged table: its JSON and its images), staged for `wandb sync`.
                "files": {entry.path: entry.local_path for entry in contents if not entry.ref},
            })
        elif kind == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                run.history_keys.add(key)
                # A logged table is recorded as its fields: "<name>/_type" = "table-file", "<name>/nrows", ...
                if key.endswith("/_type") and "table-file" in item.value_json:
                    run.tables.append(key.removesuffix("/_type"))
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[item.key or "/".join(item.nested_key)] = item.value_json
    return run


def offline_runs(wandb_dir: Path) -> list[Path]:
    """Every offline run directory under a W&B dir (``<dir>/wandb/offline-run-*``), oldest first."""
    return sorted(Path(wandb_dir).glob("wandb/offline-run-*"))
