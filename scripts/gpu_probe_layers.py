"""CUDA-event layer times (the agent's Tracker) vs torch.profiler kernel times, on a real GPU.

Prints one JSON object: per-call forward time of the model and of each block as the agent's CUDA
events measured it, and the CUDA kernel time per call torch.profiler saw for the same work (run
separately, so neither measurement disturbs the other). Called by scripts/gpu_probe.py.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"cuda_events": None, "reason": "torch sees no CUDA device"}))
        return 0
    from torch.profiler import ProfilerActivity, profile

    from wattlens.profiler.agent.tracker import Tracker

    dev = torch.device("cuda", torch.cuda.device_count() - 1)  # the last GPU, without set_device
    model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(4096, 4096), torch.nn.GELU())
                                  for _ in range(4)]).to(dev)
    x = torch.randn(512, 4096, device=dev)
    calls = 30
    with torch.no_grad():
        for _ in range(5):
            model(x)
        torch.cuda.synchronize(dev)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                model(x)
            torch.cuda.synchronize(dev)
        kernel_us = sum(e.self_device_time_total for e in prof.key_averages())
        msgs: list[dict] = []
        fails: list[BaseException] = []
        tracker = Tracker(torch, msgs.append, fails.append, window_ns=0, count_flops="off")
        tracker.install()
        for _ in range(calls):
            model(x)
        tracker.finish()
        tracker.uninstall()
    per_path: dict[str, list[int]] = {}
    for m in msgs:
        if m.get("type") == "layers":
            for r in m["rows"]:
                if r["phase"] == "forward":
                    acc = per_path.setdefault(r["path"], [0, 0])
                    acc[0] += r["time_ns"]
                    acc[1] += r["calls"]
    events_ms = {p: (t / c / 1e6 if c else None) for p, (t, c) in per_path.items()}
    root_ms = events_ms.get("")
    kernels_ms = kernel_us / calls / 1e3
    print(json.dumps({
        "cuda_events": True, "device": str(dev), "failures": [repr(f) for f in fails],
        "event_ms_per_call": events_ms, "profiler_kernel_ms_per_call": kernels_ms,
        "root_event_over_kernels": (root_ms / kernels_ms) if root_ms and kernels_ms else None,
        "timing": next((m.get("timing") for m in msgs if m.get("type") == "layers"), None),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
