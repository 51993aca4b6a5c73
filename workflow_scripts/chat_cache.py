"""Persistent LLM response cache: a request answered once is never paid for again.

One SQLite file under `resources/` (not `results/`, so deleting results never re-bills), shared
by concurrent annotation jobs: WAL journal, a generous busy timeout, and `INSERT OR IGNORE`, so
two jobs that race on the same key keep the first answer. Every response is committed as soon
as it arrives, so a job killed mid-way loses nothing it had received.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Self

from .chat import ChatRequest, ChatResponse, request_key

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    created REAL NOT NULL
)
"""


class ResponseCache:
    def __init__(self, path: str | Path, provider: str, model: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.provider, self.model = provider, model
        self._db = sqlite3.connect(self.path, timeout=120, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(SCHEMA)
        self._db.commit()

    def key(self, request: ChatRequest) -> str:
        return request_key(self.provider, self.model, request)

    def get(self, request: ChatRequest) -> ChatResponse | None:
        row = self._db.execute("SELECT response FROM responses WHERE key = ?", (self.key(request),)).fetchone()
        return None if row is None else ChatResponse.from_json(json.loads(row[0]))

    def put(self, request: ChatRequest, response: ChatResponse) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
            (
                self.key(request),
                self.provider,
                self.model,
                json.dumps(request.to_json(), ensure_ascii=False),
                json.dumps(response.to_json(), ensure_ascii=False),
                time.time(),
            ),
        )
        self._db.commit()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
