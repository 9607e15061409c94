"""Training in a multiprocessing child that ends by an exception, for `wattlens run`.

argv: MODE N [--after]. The child trains N whole steps of a tiny model, then raises in step N's
backward (after its forward); with --after it raises after the N steps (in "saving").
MODE "process": one `multiprocessing.Process` child, spawn start method; the parent prints
"child pid P" and exits with the child's exit code.
MODE "spawn": `torch.multiprocessing.spawn`, nprocs=2, a gloo group: both ranks train N steps;
rank 1 raises once rank 0 has ended (so rank 0 says its goodbye before the parent stops it).
MODE "fork": the parent trains N steps itself, then a `multiprocessing.Process` child (fork start
method) trains and raises.
Unchanged user code: no wattlens import.
"""

import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as tmp


def train(n, after, tag):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(16, 32)
    for i in range(n if after else n + 1):
        loss = model(x).pow(2).mean()
        if i == n:
            raise RuntimeError(f"simulated crash in {tag}, step {i}'s backward")
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model


def child(n, after):
    train(n, after, "the child")
    raise RuntimeError("simulated crash in the child while saving")  # --after: every step done


def rank_main(rank, n, after, port):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    pids = [None, None]
    dist.all_gather_object(pids, os.getpid())
    if rank == 0:
        train(n, True, "rank 0")
        dist.barrier()
        dist.destroy_process_group()
        return
    model = train(n, True, "rank 1")
    dist.barrier()
    deadline = time.monotonic() + 120
    while os.path.exists(f"/proc/{pids[0]}") and time.monotonic() < deadline:
        time.sleep(0.05)  # rank 0 has ended and its parent has reaped it
    if after:
        raise RuntimeError("simulated crash in rank 1 while saving")
    model(torch.randn(16, 32)).pow(2).mean()
    raise RuntimeError(f"simulated crash in rank 1, step {n}'s backward")


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    mode, n, after = sys.argv[1], int(sys.argv[2]), "--after" in sys.argv
    if mode == "spawn":
        tmp.spawn(rank_main, args=(n, after, free_port()), nprocs=2)  # raises in the parent
    else:
        if mode == "fork":
            train(n, True, "the parent")
        ctx = tmp.get_context("spawn" if mode == "process" else "fork")
        p = ctx.Process(target=child, args=(n, after))
        p.start()
        print(f"child pid {p.pid}", flush=True)
        p.join()
        sys.exit(p.exitcode)
