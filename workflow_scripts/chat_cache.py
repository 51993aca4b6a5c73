"""Persistent LLM response cache, the one truth about answers: a request answered once is never
paid for again, and every job writes the answer the cache holds.

One SQLite file under `resources/` (not `results/`, so deleting results never re-bills), shared
by concurrent annotation jobs, also from several working directories: WAL journal and a generous
busy timeout. WAL needs every process using the file on one host, and SQLite's locks are not to be
trusted over a network filesystem: a cache there gets a warning (`network_filesystem`); the
annotation jobs are local rules, so a cache on the submitting host's own disk serves a cluster run.
Two tables:

- `responses`: one answer per request key, `INSERT OR IGNORE` (the first answer wins) and read
  back at once, so a job that raced another one uses the winner's answer, never its own copy.
  Every answer is committed as soon as it arrives: a job killed mid-way loses nothing it had.
- `claims`: which job is asking which request now (owner, host, pid, the pid's start time,
  heartbeat). A job asks only what it has claimed; a request claimed by a live job is waited
  for, not asked again. A claim is stale, and taken over, when its process is gone on this host
  (or the pid now belongs to another process), or when its heartbeat is older than
  `stale_after_s` (a claimant on another host, or a hung one). Claims are dropped as answers
  arrive and released when the job ends, whichever way it ends short of SIGKILL.
"""
from __future__ import annotations

import json
import logging
import os
import random
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Self

from .chat import ChatRequest, ChatResponse, request_key

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    created REAL NOT NULL
)
""",
    """
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started TEXT NOT NULL,
    heartbeat REAL NOT NULL
)
""",
)
log = logging.getLogger(__name__)

STALE_AFTER_S = 300.0
BUSY_TIMEOUT_S = 120.0
BATCH = 500  # keys per `IN (...)` query (SQLite allows 999 variables in old builds)


def process_start(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (Linux /proc); "" where /proc is absent;
    None when the process does not exist or is a zombie (killed, not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (command)": state is field 3, starttime 22
    return None if fields[0] in ("Z", "X") else fields[19]


NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs",
                       "fuse.glusterfs", "fuse.sshfs", "9p", "afs", "pvfs2", "fuse.ceph"}


def network_filesystem(path: Path, mounts: str | None = None) -> str | None:
    """The type of the network filesystem holding `path` (the longest mount point above it in
    /proc/self/mounts; of two on one point the later, mounted over the other), or None: a local
    one, or no mount table to read."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return None
    target, best, kind = str(path.resolve()), -1, None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= best:
            best, kind = len(point), fields[2]
    return kind if kind in NETWORK_FILESYSTEMS else None


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
    db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    return db


def _set_up(db: sqlite3.Connection, path: Path, timeout_s: float = BUSY_TIMEOUT_S) -> None:
    """WAL mode and the tables, retried while the file is locked: jobs that start together on a new
    file all switch it to WAL, and SQLite answers all but one "database is locked" at once rather
    than wait (waiting could deadlock), busy timeout or not."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            for table in SCHEMA:
                db.execute(table)
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise sqlite3.OperationalError(f"{path}: {error}") from error
            time.sleep(random.uniform(0.005, 0.05))


class ResponseCache:
    def __init__(self, path: str | Path, provider: str, model: str, stale_after_s: float = STALE_AFTER_S):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.provider, self.model = provider, model
        self.stale_after_s = stale_after_s
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.started = process_start(self.pid) or ""
        self.owner = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:12]}"
        remote = network_filesystem(self.path.parent)
        if remote:
            log.warning("the answer cache %s is on a %s filesystem: SQLite's WAL and locks are not safe there; "
                        "set annotation.cache to a path on this host's own disk", self.path, remote)
        self._db = connect(self.path)
        _set_up(self._db, self.path)
        self._beating = threading.Event()
        self._heart: threading.Thread | None = None

    def key(self, request: ChatRequest) -> str:
        return request_key(self.provider, self.model, request)

    def get(self, request: ChatRequest) -> ChatResponse | None:
        return self.get_key(self.key(request))

    def get_key(self, key: str) -> ChatResponse | None:
        row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else ChatResponse.from_json(json.loads(row[0]))

    def answered(self, keys: Iterable[str]) -> dict[str, ChatResponse]:
        """{key: the cached answer} for those of `keys` the cache holds."""
        keys, found = list(keys), {}
        for start in range(0, len(keys), BATCH):
            part = keys[start:start + BATCH]
            query = f"SELECT key, response FROM responses WHERE key IN ({','.join('?' * len(part))})"
            for key, response in self._db.execute(query, part):
                found[key] = ChatResponse.from_json(json.loads(response))
        return found

    def put(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        """Store `response` unless the cache already holds an answer, drop this job's claim on the
        request, and return what the cache holds now: the answer every job must use."""
        key = self.key(request)
        with self._transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
                (key, self.provider, self.model, json.dumps(request.to_json(), ensure_ascii=False),
                 json.dumps(response.to_json(), ensure_ascii=False), time.time()),
            )
            self._db.execute("DELETE FROM claims WHERE key = ? AND owner = ?", (key, self.owner))
            (stored,) = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return ChatResponse.from_json(json.loads(stored))

    # ---- claims ----
    def claim(self, keys: Iterable[str], limit: int) -> list[str]:
        """Claim up to `limit` of `keys` that no answer and no live claim covers (this job's own
        claims count as claimable); returns the keys this job may ask now, in the given order."""
        mine: list[str] = []
        now = time.time()
        with self._transaction():
            for key in keys:
                if len(mine) >= limit:
                    break
                if self._db.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone():
                    continue
                holder = self._db.execute("SELECT owner, host, pid, started, heartbeat FROM claims WHERE key = ?",
                                          (key,)).fetchone()
                if holder is not None and holder[0] != self.owner and self._alive(*holder[1:], now):
                    continue
                self._db.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?)",
                                 (key, self.owner, self.host, self.pid, self.started, now))
                mine.append(key)
        if mine:
            self._start_heartbeat()
        return mine

    def release(self) -> None:
        """Drop every claim of this job (its unanswered requests become anyone's)."""
        self._db.execute("DELETE FROM claims WHERE owner = ?", (self.owner,))

    def _alive(self, host: str, pid: int, started: str, heartbeat: float, now: float) -> bool:
        if now - heartbeat > self.stale_after_s:
            return False
        if host != self.host:
            return True
        current = process_start(pid)
        return current is not None and (not started or not current or current == started)

    def _start_heartbeat(self) -> None:
        """Refresh this job's claims every stale_after_s / 4 while the cache is open (its own
        connection: a sqlite3 connection is not shared between threads here)."""
        if self._heart is not None:
            return

        def beat():
            db = connect(self.path)
            try:
                while not self._beating.wait(self.stale_after_s / 4):
                    db.execute("UPDATE claims SET heartbeat = ? WHERE owner = ?", (time.time(), self.owner))
            finally:
                db.close()

        self._heart = threading.Thread(target=beat, name="cache-heartbeat", daemon=True)
        self._heart.start()

    def _transaction(self):
        return _Immediate(self._db)

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self._beating.set()
        if self._heart is not None:
            self._heart.join(timeout=5)
        try:
            self.release()
        finally:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Immediate:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): the write lock is taken at once, so a
    check-then-claim is atomic across processes."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, value, traceback):
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
