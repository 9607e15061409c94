"""A 2-rank DDP job (gloo, CPU) of a tiny Llama-style model built from a config, for `torchrun`.

argv: STEPS [SLOW_RANK]. The slow rank computes extra matrix products after its backward pass
(about twice a step's own work), before the loss is averaged across ranks with dist.all_reduce,
so the other ranks wait for it there. Compute rather than a sleep: on a loaded machine both
grow together, so the slow rank's lead holds at any load.
Unchanged user code: no wattlens import.
"""

import sys
import time

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

torch.set_num_threads(1)
steps = int(sys.argv[1])
slow_rank = int(sys.argv[2]) if len(sys.argv) > 2 else -1
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=1, num_attention_heads=2,
                                     num_key_value_heads=2, max_position_embeddings=64))
ddp = torch.nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
x = torch.randint(0, 128, (2, 16))
a = torch.randn(256, 256)
t0 = time.perf_counter()
for _ in range(steps):
    loss = ddp(input_ids=x, labels=x).loss
    loss.backward()
    if rank == slow_rank:
        for _ in range(60):
            a = torch.tanh(a @ a)  # extra work only the slow rank does
    avg = loss.detach().clone()
    dist.all_reduce(avg)  # the mean loss, for logging
    opt.step()
    opt.zero_grad()
loop_s = time.perf_counter() - t0
dist.barrier()
dist.destroy_process_group()
print(f"rank {rank} done {loop_s:.6f}")
