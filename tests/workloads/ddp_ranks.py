"""A 2-rank gloo job (CPU) for the per-rank energy and distributed-advice tests, for `torchrun`.

argv: STEPS MODE. MODE "heavy0": rank 0 runs extra matmuls every step (it burns more CPU; rank 1
waits for it in the loss all_reduce). MODE "comm": a little compute per step (the same on both ranks) and a
large all_reduce (16 MB) every step, so both ranks spend most of each step in the collective. MODE "even": the
same small work on both ranks. Unchanged user code: no wattlens import.
"""

import sys

import torch
import torch.distributed as dist

torch.set_num_threads(1)
steps, mode = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
opt = torch.optim.SGD(model.parameters(), lr=1e-3)
x, y = torch.randn(32, 64), torch.randn(32, 1)
big = torch.ones(4 * 1024 * 1024)  # 16 MB of float32
a = torch.randn(256, 256)
for _ in range(steps):
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    if mode == "heavy0" and rank == 0:
        for _ in range(60):
            a = torch.tanh(a @ a)  # extra work only rank 0 does
    if mode == "comm":
        for _ in range(6):  # the same few ms of work on both ranks: their busy times stay alike
            a = torch.tanh(a @ a)  # at any load (a ~1-ms busy time is half noise)
        dist.all_reduce(big)
    avg = loss.detach().clone()
    dist.all_reduce(avg)
    opt.step()
    opt.zero_grad()
dist.barrier()
dist.destroy_process_group()
print(f"rank {rank} done")
