"""A small real torch workload for tests: `python torch_loop.py SECONDS [--exit-code N] [--stop-file F]`.

Prints "ready" once torch is imported and the model is built, then trains a tiny MLP until the
time is up (or the file F exists: the test says when), then exits with the given code.
"""

import sys
import time
from pathlib import Path

import torch


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    code = int(sys.argv[sys.argv.index("--exit-code") + 1]) if "--exit-code" in sys.argv else 0
    stop = Path(sys.argv[sys.argv.index("--stop-file") + 1]) if "--stop-file" in sys.argv else None
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 128), torch.randint(0, 10, (32,))
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end and not (stop is not None and stop.exists()):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return code


if __name__ == "__main__":
    sys.exit(main())
