"""A stand-in launcher (no torch): starts rank processes with RANK/LOCAL_RANK/WORLD_SIZE in their
environment, as torchrun does, and idles in a monitor loop while they work.

argv: DIR NRANKS [LATE_RANK]. Rank R writes DIR/rankR.pid, then spins in Python until DIR/stopR
exists. Rank 0 also forks a helper (it inherits RANK=0, as a DataLoader worker would) that spins
too. LATE_RANK is started only once DIR/startLATE_RANK exists. The launcher ends when every rank
has ended. The test drives everything through files: no timing.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

RANK_CODE = r"""
import os, sys, time
from pathlib import Path
d, r = Path(sys.argv[1]), int(os.environ["RANK"])

def spin(n):
    return sum(i * i for i in range(n))

def work(stop):
    while not stop.exists():
        spin(20000)

if r == 0 and os.fork() == 0:  # a forked helper with the rank's environment
    work(d / "stop0")
    os._exit(0)
(d / f"rank{r}.pid").write_text(str(os.getpid()))
work(d / f"stop{r}")
"""

folder, n = Path(sys.argv[1]), int(sys.argv[2])
late = int(sys.argv[3]) if len(sys.argv) > 3 else -1
procs: dict[int, subprocess.Popen] = {}


def start(rank: int) -> None:
    env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(n)}
    procs[rank] = subprocess.Popen([sys.executable, "-c", RANK_CODE, str(folder)], env=env)


for rank in range(n):
    if rank != late:
        start(rank)
while True:
    if late >= 0 and late not in procs and (folder / f"start{late}").exists():
        start(late)
    if len(procs) == n and all(p.poll() is not None for p in procs.values()):
        break
    time.sleep(0.1)
