"""Ingest into the shared PostgreSQL store (issue 12) beside SQLite, on this machine.

A throwaway PostgreSQL server (tests/pg.py: Debian's binaries, Unix socket, fsync off as in the
tests — a production server with fsync on commits slower per batch, not per row) and an SQLite
file, the same 400,000 samples through the same two paths as bench_core.bench_ingest.

    python benchmarks/bench_pg.py        → benchmarks/results/pg.md
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))  # tests.pg: the throwaway server
from bench_core import bench_ingest  # noqa: E402
from common import write_section  # noqa: E402

from tests.pg import NoServer, new_database, throwaway_server  # noqa: E402


def main(n_samples: int = 400_000) -> None:
    import psycopg

    sqlite_raw, sqlite_writer = bench_ingest(n_samples)
    try:
        with throwaway_server() as sock:
            with psycopg.connect(f"host={sock} user=postgres dbname=postgres") as con:
                version = con.execute("SHOW server_version").fetchone()[0]
            pg_raw, pg_writer = bench_ingest(n_samples, db=new_database(sock, "bench"))
    except NoServer as exc:
        print(write_section("pg", "Ingest into PostgreSQL (issue 12)", f"Not run here: {exc}.").read_text())
        return
    body = f"""
{n_samples:,} samples (8 series) into a new database, one process, side by side.

| Path | SQLite file (samples/s) | PostgreSQL {version}, Unix socket (samples/s) | Goal (PostgreSQL) |
|---|---|---|---|
| Store.insert_samples, batches of 20,000 | {sqlite_raw:,.0f} | {pg_raw:,.0f} | ≥ 50,000 |
| StoreWriter thread, 80 points per call (the real path) | {sqlite_writer:,.0f} | {pg_writer:,.0f} | ≥ 50,000 |

psycopg {psycopg.__version__}. Samples go to PostgreSQL by COPY (text format) in the batch's
transaction; the first version, an executemany of INSERTs like SQLite's path, measured 38,642
(insert_samples) and 44,220 (writer) samples/s on this machine (2026-11-30 06:38), under the goal.
The PostgreSQL server runs as in the tests (fsync off, on this
machine, Unix socket): it measures wattlens's side of the ingest (driver, batching), not a
remote server's disk or network.
"""
    path = write_section("pg", "Ingest into PostgreSQL (issue 12)", body)
    print(path.read_text())


if __name__ == "__main__":
    main()
