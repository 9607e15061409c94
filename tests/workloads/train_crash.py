"""A training loop that raises in step N, after its forward: `python train_crash.py N`."""

import sys

import torch

crash_at = int(sys.argv[1])
torch.set_num_threads(1)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x = torch.randn(16, 32)
for i in range(crash_at + 1):
    loss = model(x).pow(2).mean()
    if i == crash_at:
        raise RuntimeError(f"simulated crash in step {i}'s backward")
    loss.backward()
    opt.step()
    opt.zero_grad()
