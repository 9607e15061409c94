"""Inference loop for live apply tests: `python live_apply_loop.py gpt2|linear|knob STEPS SLEEP_S [OUT]`.

With OUT, the `STEP SHA1` lines also go to that file, apart from anything else the process (torch,
torchao, the agent) writes to its standard streams.

``knob`` runs the linear model with a batch size read each step from ``agent.knob("batch_size", 4)``.

Runs the same fixed input every step and prints `STEP SHA1` of the output bytes, so a test can
see exactly when the live model changed and that a revert gives bit-identical outputs again.
"""

import hashlib
import sys
import time

import torch

kind, steps, sleep_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
out_file = open(sys.argv[4], "w") if len(sys.argv) > 4 else None  # noqa: SIM115 - open for the whole run
torch.set_num_threads(1)
torch.manual_seed(0)
if kind == "gpt2":
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=256, n_positions=64,
                                       bos_token_id=0, eos_token_id=0)).eval()
    x = torch.randint(0, 256, (4, 32))
else:
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64)).eval()
    x = torch.randn(4, 64)
with torch.no_grad():
    for i in range(steps):
        if kind == "knob":
            from wattlens.profiler import agent

            x = torch.randn(agent.knob("batch_size", 4), 64)
        out = model(x)
        t = out.logits if hasattr(out, "logits") else out
        line = f"{i} {hashlib.sha1(t.float().contiguous().numpy().tobytes()).hexdigest()}"
        print(line, flush=True)
        if out_file is not None:
            out_file.write(line + "\n")
            out_file.flush()
        time.sleep(sleep_s)
print("done", flush=True)
