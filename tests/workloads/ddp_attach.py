"""A 2-rank DDP job (gloo, CPU) of a tiny Llama-style model built from a config, for `torchrun`,
to be attached to from outside (unchanged user code: no wattlens import). Driven by files:

argv: DIR. Each rank writes DIR/rankR.pid after its first training step (and its DDP step count
to DIR/stepsR every 20 steps). Both ranks train in
lockstep until DIR/stop1 exists (rank 0 looks, and the decision is all-reduced so both stop at the
same step); then rank 1 exits and rank 0 trains on alone (its own model, no collectives) until
DIR/stop0 exists.
"""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

torch.set_num_threads(1)
folder = Path(sys.argv[1])
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=1, num_attention_heads=2,
                                     num_key_value_heads=2, max_position_embeddings=64))
ddp = torch.nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
x = torch.randint(0, 128, (2, 16))
step = 0
while True:
    ddp(input_ids=x, labels=x).loss.backward()
    opt.step()
    opt.zero_grad()
    if step == 0:
        (folder / f"rank{rank}.pid").write_text(str(os.getpid()))
    step += 1
    if step % 20 == 0:  # for benchmarks/bench_attach_ranks.py: DDP steps done so far
        (folder / f"steps{rank}").write_text(str(step))
    stop = torch.tensor([1.0 if rank == 0 and (folder / "stop1").exists() else 0.0])
    dist.all_reduce(stop)
    if stop.item() > 0:
        break
if rank == 0:
    while not (folder / "stop0").exists():  # alone now: the plain model, no collectives
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
dist.destroy_process_group()
print(f"rank {rank} done after {step} DDP steps", flush=True)
