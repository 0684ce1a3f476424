"""Content hashes shared by training, evaluation, lineage and the registry.

One definition, so that a checkpoint hashed by the training job, the stage cache, the
evaluation report and the registry is the same string everywhere in a lineage manifest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_BLOCK_BYTES = 1 << 20


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def directory_sha256(directory: str | Path, exclude: tuple[str, ...] = ()) -> str:
    """sha256 over sorted ``relative-path NUL file-sha256`` lines of every file below ``directory``.

    ``exclude`` names relative paths to leave out (e.g. a metrics file written after the weights).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"directory not found: {directory}")
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if relative in exclude:
            continue
        digest.update(f"{relative}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()
