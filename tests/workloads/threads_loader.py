"""A multi-threaded torch workload for tests: `python threads_loader.py SECONDS`.

Two intra-op threads and a DataLoader worker process (so the target is a process tree whose child
appears after the target started), training a small MLP. Prints "ready" once the worker runs.
"""

import sys
import time

import torch
from torch.utils.data import DataLoader, IterableDataset


class Batches(IterableDataset):
    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        while True:
            x = torch.randn(64, 256, generator=g)
            yield x @ torch.randn(256, 256, generator=g), torch.randint(0, 10, (64,), generator=g)


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    torch.set_num_threads(2)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = iter(DataLoader(Batches(), batch_size=None, num_workers=1))
    next(loader)
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        x, y = next(loader)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return 0


if __name__ == "__main__":
    sys.exit(main())
