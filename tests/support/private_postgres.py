"""A PostgreSQL server of one test's (or one benchmark's) own, to stop, kill and start again without touching the
machine's: `initdb` in a throw-away folder, `pg_ctl` on a free 127.0.0.1 port, its socket in that folder.

PostgreSQL refuses to run as root, so when the caller is root the folder is given to the `postgres` user and the
commands run as that user (`runuser`)."""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from tests.support.ports import free_port

BIN_ROOT = Path("/usr/lib/postgresql")
START_TIMEOUT_S = 60


def _bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(BIN_ROOT.glob(f"*/bin/{name}"), key=lambda path: int(path.parts[-3]))
    if not versions:
        raise RuntimeError(f"{name} not found (Debian's postgresql package puts it under {BIN_ROOT})")
    return str(versions[-1])


class PrivatePostgres:
    """`start()` makes the cluster the first time; `crash()` kills the server as a power cut would (SIGKILL of the
    postmaster and its children: PostgreSQL recovers from its WAL at the next start); `stop()` is a clean stop."""

    def __init__(self, *, database: str = "infra_ainode") -> None:
        # Its own folder under /tmp, which the postgres user can reach (a test's tmp_path is root's alone).
        self.folder = Path(tempfile.mkdtemp(prefix="ainode-pg-"))
        self.folder.chmod(0o755)
        self.database = database
        self.data = self.folder / "data"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *command: str) -> subprocess.CompletedProcess:
        if self._as_postgres:
            command = ("runuser", "-u", "postgres", "--", *command)
        result = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT_S)
        if result.returncode:
            raise subprocess.CalledProcessError(result.returncode, command, result.stdout, result.stderr)
        return result

    def start(self) -> PrivatePostgres:
        fresh = not self.data.exists()
        if fresh:
            if self._as_postgres:
                account = pwd.getpwnam("postgres")
                os.chown(self.folder, account.pw_uid, account.pw_gid)
            self._run(_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off "
                   "-c max_connections=100")
        for attempt in range(10):  # after a crash, the old server's children may hold its memory a moment longer
            try:
                self._run(_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.folder / "server.log"),
                          "-w", "-t", str(START_TIMEOUT_S), "start")
                break
            except subprocess.CalledProcessError:
                if attempt == 9:
                    raise
                time.sleep(0.5)
        if fresh:
            with psycopg.connect(self._conninfo("postgres"), autocommit=True) as db:
                db.execute(f'CREATE DATABASE "{self.database}"')
        return self

    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        """The rows `sql` answers in the database, on a connection of its own."""
        with psycopg.connect(self._conninfo(), connect_timeout=2) as db:
            return db.execute(sql, params).fetchall()

    def answers(self) -> bool:
        try:
            self.rows("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def _conninfo(self, database: str | None = None) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database or self.database}"

    def crash(self) -> None:
        """SIGKILL the postmaster; its children notice and exit within moments (`start` waits for them)."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 9)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.answers():
            time.sleep(0.1)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        """Stop it and delete its folder."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
