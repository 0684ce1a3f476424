"""Persistent caption cache: a rerun, or another run over overlapping images, pays nothing twice.

Key: sha256 of (image sha256, backend identity fingerprint). The identity covers the model id,
weights hash, prompt template + text and decoding parameters, so changing any of them misses
the cache; the endpoint URL and the API key are not part of it. Storage: one SQLite file under
``<home>/cache`` (WAL mode, one writer at a time), committed per batch so a crash keeps every
finished batch. Only captions are cached, never per-image errors (they may be transient).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from tasks.caption.provenance import BackendIdentity


def cache_key(image_sha256: str, identity: BackendIdentity) -> str:
    return hashlib.sha256(f"{image_sha256}|{identity.fingerprint()}".encode()).hexdigest()


class CaptionCache:
    """``get_many`` / ``put_many`` over a SQLite table (key -> caption, provenance JSON)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS captions (key TEXT PRIMARY KEY, caption TEXT NOT NULL, provenance TEXT NOT NULL)"
        )
        self._db.commit()

    def get_many(self, keys: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        found: dict[str, tuple[str, dict[str, Any]]] = {}
        for start in range(0, len(keys), 500):  # SQLite caps bound parameters per statement
            chunk = keys[start : start + 500]
            rows = self._db.execute(
                f"SELECT key, caption, provenance FROM captions WHERE key IN ({','.join('?' * len(chunk))})", chunk
            )
            for key, caption, provenance in rows:
                found[key] = (caption, json.loads(provenance))
        return found

    def put_many(self, entries: list[tuple[str, str, dict[str, Any]]]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO captions (key, caption, provenance) VALUES (?, ?, ?)",
            [(key, caption, json.dumps(provenance, sort_keys=True)) for key, caption, provenance in entries],
        )
        self._db.commit()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM captions").fetchone()[0]

    def close(self) -> None:
        self._db.close()


__all__ = ["CaptionCache", "cache_key"]
