"""The service's job records: one SQLite file under ``--state``, written only by the ingress.

SQLite in WAL mode is the embedded default: readers (a status call, ``/metrics``) never wait for the
writer, a record survives a crash the moment its transaction commits, and there is no server to run.
One process writes (the ingress replica); a lock serialises its threads. The inputs and outputs of a
job are files in its own folder beside the database (``STATE/jobs/ID/``); the record holds their paths.

A job's life: ``queued`` -> ``running`` -> ``done`` | ``low_sync`` | ``failed``, or ``cancelled``
from the first two. :meth:`JobStore.requeue` (at every start) puts ``running`` jobs back to ``queued``:
they were cut off by a stop or a crash, and the batch resume key (batch/resume.py) makes the rerun
skip work whose video and report are already complete, so nothing is done twice.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

QUEUED, RUNNING, DONE, FAILED, LOW_SYNC, CANCELLED = "queued", "running", "done", "failed", "low_sync", "cancelled"
STATUSES = (QUEUED, RUNNING, DONE, FAILED, LOW_SYNC, CANCELLED)
ACTIVE = (QUEUED, RUNNING)
FINISHED = (DONE, FAILED, LOW_SYNC, CANCELLED)
#: the columns holding JSON
_JSON = ("job", "clip", "options", "report")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL,
    client TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    folder TEXT NOT NULL,
    job TEXT NOT NULL,
    clip TEXT NOT NULL,
    options TEXT NOT NULL,
    frames_done INTEGER NOT NULL DEFAULT 0,
    frames_total INTEGER,
    seconds REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    error TEXT,
    fix TEXT,
    report TEXT,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
"""


@dataclass
class JobRecord:
    """One job as stored. ``job``: the batch job (batch/jobs.Job.to_dict: its input and output paths);
    ``clip``: the effective per-clip options the worker runs with; ``options``: those the client set."""

    id: str
    folder: str
    job: dict
    clip: dict
    options: dict = field(default_factory=dict)
    status: str = QUEUED
    client: str = ""
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    frames_done: int = 0
    frames_total: int | None = None
    seconds: float | None = None
    attempts: int = 0
    worker: str | None = None
    error: str | None = None
    fix: str | None = None
    report: dict | None = None
    deleted: bool = False

    @property
    def output(self) -> Path:
        return Path(self.job["output"])


class JobStore:
    """The job table of ``path`` (created on first use, WAL mode). Safe across the threads of one process."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # each commit on disk before it returns: a 202 survives a power cut
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def deleted_with_folders(self) -> list[JobRecord]:
        """Records whose files DELETE removes (their folders should be gone; a stop may have come between)."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE deleted = 1").fetchall()
        return [record for record in map(_from_row, rows) if Path(record.folder).exists()]

    def journal_mode(self) -> str:
        with self._lock:
            return self._db.execute("PRAGMA journal_mode").fetchone()[0]

    # ------------------------------------------------------------------------------------ writes

    def add(self, record: JobRecord) -> None:
        values = _to_row(record)
        names = ", ".join(values)
        with self._lock:
            self._db.execute(f"INSERT INTO jobs ({names}) VALUES ({', '.join('?' * len(values))})", tuple(values.values()))

    def update(self, job_id: str, **values) -> None:
        """Set some fields of a record (JSON fields as Python values)."""
        row = _to_row_values(values)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in row)} WHERE id = ?", (*row.values(), job_id))

    def finish(self, job_id: str, status: str, *, only_if_active: bool = True, **values) -> bool:
        """End a job with ``status`` (and fields); with ``only_if_active``, only a queued or running one (a
        cancelled job stays cancelled whatever its worker says after). True when the record changed."""
        row = _to_row_values({"status": status, "finished": time.time(), **values})
        where = " AND status IN (?, ?)" if only_if_active else ""
        with self._lock:
            cursor = self._db.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in row)} WHERE id = ?{where}",
                                      (*row.values(), job_id, *(ACTIVE if only_if_active else ())))
        return cursor.rowcount == 1

    def requeue(self) -> list[JobRecord]:
        """Put the jobs a stop cut off back in the queue; the queued jobs, oldest first (a restart submits them)."""
        with self._lock:
            self._db.execute("UPDATE jobs SET status = ?, frames_done = 0 WHERE status = ?", (QUEUED, RUNNING))
        return self.page(statuses=(QUEUED,), limit=None)[0]

    # ------------------------------------------------------------------------------------ reads

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _from_row(row)

    def page(self, *, statuses: tuple[str, ...] | None = None, offset: int = 0,
             limit: int | None = 50) -> tuple[list[JobRecord], int]:
        """Records in submission order (``offset``, at most ``limit``) and how many match in all."""
        where, args = "", ()
        if statuses:
            where, args = f" WHERE status IN ({', '.join('?' * len(statuses))})", tuple(statuses)
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM jobs{where}", args).fetchone()[0]
            rows = self._db.execute(f"SELECT * FROM jobs{where} ORDER BY seq LIMIT ? OFFSET ?",
                                    (*args, -1 if limit is None else limit, offset)).fetchall()
        return [_from_row(row) for row in rows], total

    def counts(self) -> dict[str, int]:
        """Jobs by status (every status, zeros included)."""
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {**dict.fromkeys(STATUSES, 0), **{status: n for status, n in rows}}

    def active_for(self, client: str) -> int:
        """Queued and running jobs of one client."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE client = ? AND status IN (?, ?)",
                                    (client, *ACTIVE)).fetchone()[0]

    def totals(self) -> dict[str, float]:
        """Over the jobs that made a video (done, low_sync): how many, their frames and their seconds."""
        with self._lock:
            jobs, frames, seconds = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(frames_done), 0), COALESCE(SUM(seconds), 0) FROM jobs "
                "WHERE status IN (?, ?)", (DONE, LOW_SYNC)).fetchone()
        return {"jobs": jobs, "frames": frames, "seconds": seconds}

    def finished_seconds(self) -> list[float]:
        """Each finished job's run time (the ``/metrics`` histogram)."""
        with self._lock:
            rows = self._db.execute("SELECT seconds FROM jobs WHERE seconds IS NOT NULL AND status IN (?, ?, ?)",
                                    (DONE, LOW_SYNC, FAILED)).fetchall()
        return [row[0] for row in rows]


def _to_row(record: JobRecord) -> dict:
    return _to_row_values(asdict(record))


def _to_row_values(values: dict) -> dict:
    return {k: json.dumps(v) if k in _JSON and v is not None else int(v) if isinstance(v, bool) else v
            for k, v in values.items()}


def _from_row(row: sqlite3.Row) -> JobRecord:
    names = {f.name for f in fields(JobRecord)}
    values = {k: row[k] for k in row.keys() if k in names}
    for key in _JSON:
        if values.get(key) is not None:
            values[key] = json.loads(values[key])
    values["deleted"] = bool(values["deleted"])
    return JobRecord(**values)
