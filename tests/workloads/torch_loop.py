"""A small real torch workload for tests: `python torch_loop.py SECONDS [--exit-code N]`.

Prints "ready" once torch is imported and the model is built, then trains a tiny MLP until the
time is up, then exits with the given code.
"""

import sys
import time

import torch


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    code = int(sys.argv[sys.argv.index("--exit-code") + 1]) if "--exit-code" in sys.argv else 0
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 128), torch.randint(0, 10, (32,))
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return code


if __name__ == "__main__":
    sys.exit(main())
