"""GPT-2-style inference loop from a small config: `python gpt2_infer.py STEPS [--crash-at N]`
(raises before forward N) or `[--crash-in-forward N]` (forward N raises, inside its second block)."""

import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 40
crash_at = int(sys.argv[sys.argv.index("--crash-at") + 1]) if "--crash-at" in sys.argv else None
crash_in = int(sys.argv[sys.argv.index("--crash-in-forward") + 1]) if "--crash-in-forward" in sys.argv else None
torch.set_num_threads(1)
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=256, n_positions=64,
                                   bos_token_id=0, eos_token_id=0)).eval()
ids = torch.randint(0, 256, (4, 32))
calls = []


def fail_inside(module, args, output):
    calls.append(1)
    if len(calls) == crash_in + 1:
        raise RuntimeError("simulated crash inside a forward")


if crash_in is not None:
    model.transformer.h[1].register_forward_hook(fail_inside)
with torch.no_grad():
    for i in range(steps):
        if i == crash_at:
            raise RuntimeError("simulated crash in the user's script")
        model(ids)
print("done", flush=True)
