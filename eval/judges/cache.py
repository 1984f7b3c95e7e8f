"""An on-disk cache of judge API replies, so a re-run of the same judging costs nothing.

SQLite: each reply is committed on its own, so a crash loses at most the call in flight, and
several threads or processes can share one file. Keys are hashes of (judge model, mode,
prompt); values are the parsed replies as JSON. Nothing secret is stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any


def default_cache_path() -> Path:
    """``$EM_JUDGE_CACHE``, else ``~/.cache/emergent-misalignment-toolkit/judge_cache.sqlite``."""
    env = os.environ.get("EM_JUDGE_CACHE")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "emergent-misalignment-toolkit" / "judge_cache.sqlite"


def cache_key(model: str, mode: str, prompt: str) -> str:
    """Stable key of one judge call; also its ``custom_id`` in a Batch API request."""
    return hashlib.sha256(json.dumps([model, mode, prompt], ensure_ascii=False).encode()).hexdigest()


class JudgeCache:
    """Key -> reply mapping on disk; thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=60)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, model TEXT, mode TEXT, reply TEXT NOT NULL)"
            )

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, model: str, mode: str, reply: dict[str, Any]) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?)", (key, model, mode, json.dumps(reply))
            )

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
