"""Where jobs live: one SQLite file that every gateway replica opens.

Why SQLite: a job must outlive the gateway replica that accepted it, and the result itself
lives in the PACS (the stored SR, with a deterministic UID), so what needs keeping is small:
the request, its state and a lease. SQLite keeps that transactionally in one file with no
server to run; its locking lets several gateway processes on one node share it. Gateways on
several nodes need the file on a volume all of them mount (docs: "Hospital integration").

A worker claims a job by taking its lease in one transaction; while it runs, it renews the
lease. A job whose worker died (its replica was killed, its node lost) keeps status
`running` with a lease in the past, and the next claim, by any gateway, takes it again.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from serving.protocol.jobs import Job, JobResult, JobSkip, JobSource
from serving.protocol.priority import Priority

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    source TEXT NOT NULL,
    models TEXT NOT NULL,
    tenant TEXT,
    priority INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    lease_until REAL,
    not_before REAL,
    reason TEXT,
    results TEXT NOT NULL DEFAULT '[]',
    skipped TEXT NOT NULL DEFAULT '[]',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_pending ON jobs (status, priority, created);
"""


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        return Job(
            id=row["id"], study_instance_uid=row["study_uid"], source=row["source"],
            models=json.loads(row["models"]),
            priority=Priority(row["priority"]).label, status=row["status"],
            attempts=row["attempts"], created=row["created"], updated=row["updated"],
            results=json.loads(row["results"]), skipped=json.loads(row["skipped"]),
            reason=row["reason"],
        )

    def create(self, study_uid: str, models: Sequence[str], tenant: str | None,
               priority: Priority, source: JobSource = "pacs", job_id: str | None = None
               ) -> Job:
        now = time.time()
        job_id = job_id or new_job_id()
        with self._db() as db:
            db.execute(
                "INSERT INTO jobs (id, study_uid, source, models, tenant, priority, status, "
                "created, updated) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                (job_id, study_uid, source, json.dumps(list(models)), tenant, int(priority),
                 now, now),
            )
        job = self.get(job_id, tenant)
        assert job is not None
        return job

    def get(self, job_id: str, tenant: str | None) -> Job | None:
        """The job, if it exists and belongs to `tenant` (auth off: tenant None)."""
        with self._db() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or row["tenant"] != tenant:
            return None
        return self._job(row)

    def claim(self, owner: str, lease_s: float, max_attempts: int) -> tuple[Job, str] | None:
        """Take the most urgent runnable job (queued, or running with an expired lease): its
        lease, one more attempt. A job that has had its `max_attempts` fails instead.
        Returns the job and its tenant."""
        now = time.time()
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "UPDATE jobs SET status = 'failed', updated = ?, owner = NULL, reason = "
                "'gave up after ' || attempts || ' attempts; last: ' || "
                "COALESCE(reason, 'its gateway replica was lost') "
                "WHERE status = 'running' AND lease_until < ? AND attempts >= ?",
                (now, now, max_attempts),
            )
            row = db.execute(
                "UPDATE jobs SET status = 'running', owner = ?, lease_until = ?, "
                "attempts = attempts + 1, updated = ? WHERE id = ("
                "  SELECT id FROM jobs WHERE (status = 'queued' AND "
                "  (not_before IS NULL OR not_before <= ?)) OR "
                "  (status = 'running' AND lease_until < ?) "
                "  ORDER BY priority DESC, created LIMIT 1"
                ") RETURNING *",
                (owner, now + lease_s, now, now, now),
            ).fetchone()
            db.execute("COMMIT")
        return None if row is None else (self._job(row), row["tenant"])

    def _update(self, job_id: str, owner: str, sets: str, args: Sequence[Any]) -> bool:
        """Apply `sets` if `owner` still holds the job (a worker whose lease was taken over
        must not overwrite the new run's state)."""
        with self._db() as db:
            cursor = db.execute(
                f"UPDATE jobs SET {sets}, updated = ? WHERE id = ? AND owner = ? "
                "AND status = 'running'",
                (*args, time.time(), job_id, owner),
            )
            return cursor.rowcount == 1

    def renew(self, job_id: str, owner: str, lease_s: float) -> bool:
        return self._update(job_id, owner, "lease_until = ?", (time.time() + lease_s,))

    def finish(self, job_id: str, owner: str, results: Sequence[JobResult],
               skipped: Sequence[JobSkip]) -> bool:
        return self._update(
            job_id, owner, "status = 'done', owner = NULL, reason = NULL, results = ?, "
            "skipped = ?", (json.dumps([r.model_dump() for r in results]),
                            json.dumps([s.model_dump() for s in skipped])))

    def fail(self, job_id: str, owner: str, reason: str) -> bool:
        return self._update(job_id, owner, "status = 'failed', owner = NULL, reason = ?",
                            (reason,))

    def retry_later(self, job_id: str, owner: str, reason: str, delay_s: float) -> bool:
        """Back to the queue, not before `delay_s` from now (the PACS or a model was busy)."""
        return self._update(
            job_id, owner, "status = 'queued', owner = NULL, lease_until = NULL, "
            "not_before = ?, reason = ?", (time.time() + delay_s, reason))
