"""The bundled demo workload: a real GPT-2-style transformers model built from a config (nothing
is downloaded) doing inference and a few training steps, on the GPU when there is one.

Run as a separate process (`python -m wattlens.app.demo_workload --seconds 20`); `wattlens demo`
launches it under the in-process agent. The GUI process never imports this module.
"""

from __future__ import annotations

import argparse
import sys
import time


def build_model(device: str):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=4, n_embd=256, n_head=4, n_positions=128, vocab_size=4096,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # the default, named: silences a warning for config-built models
    return model.to(device), config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="wattlens-demo-workload")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--train-every", type=int, default=4, help="one training step after N inference steps")
    args = p.parse_args(argv)

    from wattlens.app.logsetup import quiet_library_notices

    quiet_library_notices()  # before transformers imports torchao
    import torch

    try:  # the explicit agent API: one step per iteration, inference or training alike
        from wattlens.profiler import agent
    except ImportError:
        agent = None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)  # leave a core for the profiler and the app
    model, config = build_model(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator(device="cpu").manual_seed(1)
    print(f"demo workload: GPT-2-style model, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M "
          f"parameters, on {device}", flush=True)
    end = time.monotonic() + args.seconds
    n = 0
    while time.monotonic() < end:
        ids = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len), generator=gen).to(device)
        if n % (args.train_every + 1) == args.train_every:
            model.train()
            opt.zero_grad(set_to_none=True)
            loss = model(ids, labels=ids).loss
            loss.backward()
            opt.step()
        else:
            model.eval()
            with torch.no_grad():
                model(ids)
        n += 1
        if agent is not None:
            agent.step(samples=args.batch_size, tokens=args.batch_size * args.seq_len)
    print(f"demo workload: {n} steps done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
