"""A training loop that ends by an exception: `python train_crash.py N` raises in step N, after its
forward; `--after` runs N whole steps and raises after them (in "saving")."""

import sys

import torch

n = int(sys.argv[1])
after = "--after" in sys.argv
torch.set_num_threads(1)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x = torch.randn(16, 32)
for i in range(n if after else n + 1):
    loss = model(x).pow(2).mean()
    if i == n:
        raise RuntimeError(f"simulated crash in step {i}'s backward \x1b[2J")
    loss.backward()
    opt.step()
    opt.zero_grad()
raise RuntimeError("simulated crash while saving")
