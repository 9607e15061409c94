"""Load an output folder the way a user will: plain transformers in a fresh interpreter.

``wattlens optimize`` promises that ``AutoModel*.from_pretrained(out)`` — in a process that never
imports wattlens — computes what was verified. :func:`fresh_process_outputs` runs exactly that in
a child interpreter (isolated mode, started in a temp folder, so no wattlens source is on its
path), feeds it the verification inputs and returns its main output tensor, plus whether any
``wattlens`` module was imported there (it must not be).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from wattlens.profiler.errors import ActionError

_SCRIPT = r"""
import json, sys
import safetensors.torch as st
import torch
import transformers

folder, inputs_path, out_path, auto_name = sys.argv[1:5]
model = getattr(transformers, auto_name).from_pretrained(folder).eval()
kwargs = st.load_file(inputs_path)
if getattr(model.config, "use_cache", False):
    kwargs["use_cache"] = False
with torch.inference_mode():
    out = model(**kwargs)
tensor = getattr(out, "logits", None)
if tensor is None:
    tensor = out.last_hidden_state
st.save_file({"out": tensor.float().contiguous()}, out_path)
print(json.dumps({"wattlens_imported": sorted(m for m in sys.modules if m.split(".")[0] == "wattlens"),
                  "class": type(model).__name__}))
"""


def fresh_process_outputs(folder: Path, auto_name: str, kwargs: dict[str, torch.Tensor],
                          timeout_s: float = 900) -> tuple[torch.Tensor, dict]:
    """(main output, info) of ``transformers.<auto_name>.from_pretrained(folder)`` in a child process."""
    import safetensors.torch as st

    with tempfile.TemporaryDirectory(prefix="wattlens-plainload-") as tmp:
        inputs_path, out_path = Path(tmp) / "inputs.safetensors", Path(tmp) / "out.safetensors"
        st.save_file({k: v.contiguous().cpu() for k, v in kwargs.items()}, str(inputs_path))
        proc = subprocess.run(
            [sys.executable, "-I", "-c", _SCRIPT, str(folder), str(inputs_path), str(out_path), auto_name],
            cwd=tmp, capture_output=True, text=True, timeout=timeout_s,
            env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
                 "HF_HUB_DISABLE_PROGRESS_BARS": "1"},
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
            raise ActionError(f"plain transformers could not load the output in a fresh process: {last}",
                              hint="nothing was written; report this model type")
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        return st.load_file(str(out_path))["out"], info
