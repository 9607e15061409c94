"""Opening a wattlens database: this work tree against an earlier commit, side by side (issue 12,
Alembic migrations). Both are built as wheels and installed into temporary folders (nothing of
the repository is changed); each then opens its own database in fresh interpreters, alternating
A B A B:

- an up-to-date database: import + first open (one process) and the median of 30 further opens
  in that process (the path every command takes), and whether Alembic was imported;
- a new database (import + create: the one-time path that runs the migrations).

    python benchmarks/bench_store_open.py [BEFORE_REF] [ROUNDS]      # default: main, 8 rounds

Writes benchmarks/results/store_open.md. Not part of run_all.py (it needs a git ref to compare).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OPEN = r'''
import json, statistics, sys, time
t0 = time.perf_counter()
from wattlens.profiler.store import Store
Store(sys.argv[1]).close()
first = time.perf_counter() - t0
opens = []
for _ in range(30):
    t = time.perf_counter(); Store(sys.argv[1]).close(); opens.append(time.perf_counter() - t)
print(json.dumps({"first_s": first, "open_s": statistics.median(opens), "alembic": "alembic" in sys.modules}))
'''
CREATE = "import sys; from wattlens.profiler.store import Store; Store(sys.argv[1]).close()"


def _install(src: Path, tmp: Path, name: str) -> Path:
    wheels, target = tmp / f"{name}-wheel", tmp / name
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels)], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    *map(str, wheels.glob("*.whl"))], check=True, capture_output=True)
    return target


def _tree(ref: str | None, dst: Path) -> Path:
    dst.mkdir(parents=True)
    if ref is None:  # the work tree: tracked and untracked-but-not-ignored files
        files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                                "--exclude-standard"], check=True, capture_output=True).stdout.decode().split("\0")
        for rel in filter(None, files):
            if (ROOT / rel).is_file():
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                (dst / rel).write_bytes((ROOT / rel).read_bytes())
    else:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dst)], input=archive, check=True)
    return dst


def _run(code: str, db: str, target: Path) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, db], env={**os.environ, "PYTHONPATH": str(target)},
                         capture_output=True, text=True, cwd=tempfile.gettempdir(), check=True)
    return time.perf_counter() - t, out.stdout


def main(argv: list[str]) -> int:
    before_ref = argv[0] if argv else "main"
    rounds = int(argv[1]) if len(argv) > 1 else 8
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        targets = {f"before ({before_ref})": _install(_tree(before_ref, tmp / "src-before"), tmp, "before"),
                   "after (this tree)": _install(_tree(None, tmp / "src-after"), tmp, "after")}
        dbs = {}
        for k, target in targets.items():
            dbs[k] = str(tmp / f"{len(dbs)}.db")
            _run(CREATE, dbs[k], target)
        opened = {k: [] for k in targets}
        created = {k: [] for k in targets}
        for i in range(rounds):
            for k, target in targets.items():
                _, out = _run(OPEN, dbs[k], target)
                opened[k].append(json.loads(out))
                wall, _ = _run(CREATE, str(tmp / f"new-{list(targets).index(k)}-{i}.db"), target)
                created[k].append(wall)
    rows = ["| Version | up-to-date: import + first open (ms) | up-to-date: open, in-process (ms) | "
            "Alembic imported | new database: process wall (ms) |", "|---|---|---|---|---|"]
    for k in targets:
        med = statistics.median
        rows.append(f"| {k} | {med(r['first_s'] for r in opened[k]) * 1000:.0f} | "
                    f"{med(r['open_s'] for r in opened[k]) * 1000:.2f} | "
                    f"{'yes' if any(r['alembic'] for r in opened[k]) else 'no'} | {med(created[k]) * 1000:.0f} |")
    body = (f"Medians of {rounds} alternating rounds (fresh interpreters; in-process: median of 30 opens). "
            "An up-to-date database is opened without importing Alembic (the SQLite probe already "
            "read its revision); a new database runs the migrations, importing Alembic once.\n\n"
            + "\n".join(rows))
    path = write_section("store_open", "Opening the store: before and after Alembic migrations (issue 12)", body)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
