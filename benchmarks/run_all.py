"""Run every benchmark (or those named) and collect benchmarks/results/*.md into RESULTS.md.

    python benchmarks/run_all.py                 # all (about 20–30 minutes on 2 cores)
    python benchmarks/run_all.py core stacks     # some
    python benchmarks/run_all.py --collect       # only rebuild RESULTS.md from the sections

Each benchmark writes its own section under benchmarks/results/ and states the machine it ran
on; ratios are measured side by side in one run. Nothing here is asserted as a wall-clock limit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
ORDER = ["core", "stacks", "attach_long", "agent_overhead", "gui", "actions", "regression", "ranks",
         "attach_ranks", "pg", "node"]
SECTION = {"agent_overhead": "agent"}
#: Sections in RESULTS.md order: the benchmarks' own, plus summaries written by a benchmark mode
#: (bench_stacks.py --calibration-ab / backward by class) that keep their own file.
COLLECT = ["core", "stacks", "agent_overhead", "agent_floor", "agent_wrapper_ab", "agent_main_path", "gui", "actions", "regression",
           "stacks_issue14", "backward_reference", "stacks_overhead_llama", "stacks_overhead_llama_train",
           "attach_long_train", "attach_long_train_pooled", "attach_parts_train", "attach_alternate_train",
           "attach_alternate_train_rep2", "attach_alternate_gpt2_infer", "attach_alternate_bert_infer", "attach_native_runs_train",
           "ranks",
           "rank_split", "attach_ranks", "pg", "store_open", "node"]


def collect() -> Path:
    parts = ["# wattlens benchmark results", "",
             "Produced by `python benchmarks/run_all.py` (`make bench`); each section says when and on "
             "which machine it ran. On machines without RAPL or NVML, energy figures come from the "
             "CPU power model and are labelled *estimated*; ratios of throughput and CPU time are "
             "measured.", ""]
    for name in COLLECT:
        f = HERE / "results" / f"{SECTION.get(name, name)}.md"
        if f.exists():
            parts += [f.read_text().strip(), ""]
    out = HERE / "RESULTS.md"
    out.write_text("\n".join(parts))
    return out


def main(argv: list[str]) -> int:
    if "--collect" not in argv:
        names = [a for a in argv if not a.startswith("-")] or ORDER
        for name in names:
            script = HERE / f"bench_{name}.py"
            print(f"== {script.name}", flush=True)
            r = subprocess.run([sys.executable, str(script)])
            if r.returncode != 0:
                print(f"{script.name} failed with exit code {r.returncode}", file=sys.stderr)
                return r.returncode
    print(collect())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
