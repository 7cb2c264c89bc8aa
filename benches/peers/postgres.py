"""PostgreSQL as a usage meter, the way one would set it up for exact, durable counting.

Raw events carry a primary key on (source, id) for exact dedup, and a per-minute rollup is upserted in the same
transaction, with synchronous_commit on.

Each batch is one transaction: COPY into a temporary staging table, then one statement that inserts the new events
(ON CONFLICT DO NOTHING drops duplicates, also those repeated inside the batch) and folds exactly the rows it
inserted into `usage_minute`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from _common import dir_bytes
from psycopg import errors

from .base import Peer, decode_batch

#: initdb and postgres refuse to run as root, so a root bench runs the server as this system user.
SERVER_USER = "meterbench"

CONFIG = {
    # The defaults, spelled out because they are what makes an acknowledged batch durable.
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "256MB",
    # Large enough that a short run never waits on a WAL-volume-triggered checkpoint.
    "max_wal_size": "4GB",
    # A unix socket in the data directory only: no TCP port to pick or to collide with another server's.
    "listen_addresses": "''",
    "timezone": "'UTC'",
}

SCHEMA = """
CREATE TABLE events (
    source text, id text, subject text, time timestamptz, model text, region text, tier text,
    input_tokens int, output_tokens int, latency_ms int,
    PRIMARY KEY (source, id));
CREATE TABLE usage_minute (
    customer text, minute timestamptz, model text, region text, tier text,
    input_tokens bigint, output_tokens bigint, requests bigint,
    PRIMARY KEY (customer, minute, model, region, tier));
"""

# Per session and never WAL-logged; emptied by every commit or rollback, so a retried batch starts clean.
STAGING = """
CREATE TEMP TABLE staging (
    source text, id text, subject text, time timestamptz, model text, region text, tier text,
    input_tokens int, output_tokens int, latency_ms int) ON COMMIT DELETE ROWS
"""

COPY = "COPY staging FROM STDIN"

# Both inserts take row locks in key order, so two batches sharing keys wait for each other instead of deadlocking.
# The data-modifying CTEs run to completion even though the final SELECT only counts `ins`.
FOLD = """
WITH ins AS (
    INSERT INTO events SELECT * FROM staging ORDER BY source, id
    ON CONFLICT DO NOTHING
    RETURNING subject, time, model, region, tier, input_tokens, output_tokens),
up AS (
    INSERT INTO usage_minute
    SELECT subject, date_trunc('minute', time), model, region, tier, sum(input_tokens), sum(output_tokens), count(*)
    FROM ins GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (customer, minute, model, region, tier) DO UPDATE SET
        input_tokens = usage_minute.input_tokens + EXCLUDED.input_tokens,
        output_tokens = usage_minute.output_tokens + EXCLUDED.output_tokens,
        requests = usage_minute.requests + EXCLUDED.requests)
SELECT count(*) FROM ins
"""

USAGE = """
SELECT model, sum(input_tokens)::bigint FROM usage_minute
WHERE customer = %s AND minute >= %s AND minute < %s GROUP BY model
"""

TOTALS = "SELECT customer, sum(input_tokens)::bigint, sum(requests)::bigint FROM usage_minute GROUP BY customer"

#: The ordered locks should make these impossible; retrying keeps a rare one from failing the benchmark.
RETRYABLE = (errors.DeadlockDetected, errors.SerializationFailure)
ATTEMPTS = 5


def pg_bin() -> Path:
    """`PG_BIN`, or the newest Debian-installed server."""
    if env := os.environ.get("PG_BIN"):
        return Path(env)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    if not found:
        raise SystemExit("postgres: no PostgreSQL server found; apt-get install postgresql-15 or set PG_BIN")
    return Path(found[-1]).parent


class Postgres(Peer):
    name = "postgres"
    dedup = "exact at ingest"
    durable = True

    def open(self, data_dir: Path) -> None:
        self._bin = pg_bin()
        self._sock = data_dir
        self._pgdata = data_dir / "pgdata"
        self._log = data_dir / "postgres.log"
        self._local = threading.local()
        self._conns: list[psycopg.Connection] = []
        self._conns_lock = threading.Lock()
        root = os.geteuid() == 0
        self._user = SERVER_USER if root else pwd.getpwuid(os.geteuid()).pw_name
        self._as_user = ["runuser", "-u", SERVER_USER, "--"] if root else []
        if root:
            try:
                pwd.getpwnam(SERVER_USER)
            except KeyError:
                subprocess.run(
                    ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER], check=True
                )
            shutil.chown(data_dir, SERVER_USER, SERVER_USER)
        # C collation: ids and customer names are compared bytewise, which is also what makes text keys fast.
        self._run(
            "initdb",
            "-D",
            str(self._pgdata),
            "--no-locale",
            "--encoding=UTF8",
            "--auth=trust",
            f"--username={self._user}",
        )
        with open(self._pgdata / "postgresql.conf", "a") as conf:
            conf.write("\n# meter bench-peers\n")
            conf.writelines(f"{k} = {v}\n" for k, v in CONFIG.items())
            conf.write(f"unix_socket_directories = '{self._sock}'\n")
        self._run("pg_ctl", "start", "-w", "-D", str(self._pgdata), "-l", str(self._log))
        try:
            with self._connect() as conn:
                conn.execute(SCHEMA)
                self._version = conn.execute("SHOW server_version").fetchone()[0]
        except BaseException:
            self._stop()
            raise

    def _run(self, tool: str, *args: str) -> None:
        # cwd: the server user may not be allowed into the caller's working directory.
        subprocess.run(
            [*self._as_user, str(self._bin / tool), *args], cwd=self._sock, check=True, stdout=subprocess.DEVNULL
        )

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(host=str(self._sock), dbname="postgres", user=self._user, autocommit=True)

    def _conn(self) -> psycopg.Connection:
        """This thread's connection, opened on first use."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            conn.execute(STAGING)
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def ingest(self, body: bytes) -> tuple[int, int]:
        events = decode_batch(body)
        conn = self._conn()
        attempts = 0
        while True:
            attempts += 1
            try:
                with conn.transaction(), conn.cursor() as cur:
                    with cur.copy(COPY) as copy:
                        for e in events:
                            d = e.data
                            copy.write_row(
                                (
                                    e.source,
                                    e.id,
                                    e.subject,
                                    e.time,
                                    d.model,
                                    d.region,
                                    d.tier,
                                    d.input_tokens,
                                    d.output_tokens,
                                    d.latency_ms,
                                )
                            )
                    accepted = cur.execute(FOLD).fetchone()[0]
                return accepted, len(events) - accepted
            except RETRYABLE:
                if attempts == ATTEMPTS:
                    raise

    def usage(self, customer: str, start: datetime, end: datetime) -> dict[str, int]:
        return dict(self._conn().execute(USAGE, (customer, start, end)).fetchall())

    def totals(self) -> dict[str, tuple[int, int]]:
        return {c: (t, r) for c, t, r in self._conn().execute(TOTALS)}

    def disk_bytes(self) -> int:
        return dir_bytes(self._pgdata)

    def server_pids(self) -> list[int]:
        postmaster = int((self._pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        children = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                text = Path(stat).read_text()
            except OSError:  # exited while we looked
                continue
            # The command name may hold spaces and parentheses; the parent pid is the second field after it.
            if int(text[text.rindex(")") + 2 :].split()[1]) == postmaster:
                children.append(int(Path(stat).parent.name))
        return [postmaster, *children]

    def settings(self) -> dict[str, Any]:
        return {
            "version": f"PostgreSQL {self._version}",
            **{k: v.strip("'") for k, v in CONFIG.items() if k not in ("listen_addresses", "timezone")},
            "connection": "unix socket, one psycopg 3 connection per client thread",
            "locale": "C (--no-locale)",
            "ingest": "one transaction per batch: COPY into a temp table, then INSERT .. ON CONFLICT DO NOTHING into "
            "events and an upsert of the rows it inserted into usage_minute",
            "disk": "the whole cluster directory: tables, indexes, WAL and catalogs",
        }

    def close(self) -> None:
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self._stop()

    def _stop(self) -> None:
        self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self._pgdata))
