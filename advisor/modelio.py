"""Load a model the user names, make inputs for it, and save an optimised copy that reloads.

What ``load_model`` accepts:

* a Hugging Face model folder (``config.json`` + weights), loaded with transformers' Auto classes
  from local files only (nothing is downloaded);
* a file written by ``torch.save(model)`` — a whole pickled module. Unpickling runs code from the
  file, so it is done only for a file the user named explicitly (``torch.load(weights_only=False)``);
* a folder written by :func:`save_optimized` (it holds ``wattlens-optimization.json``).

How an optimised model is saved (no pickle ever goes into our outputs):

* from a Hugging Face folder: a folder plain transformers loads as the verified model —
  ``AutoModel*.from_pretrained(out)`` in an interpreter that never imports wattlens. Pruning lives
  in config fields (``intermediate_size``, ``num_hidden_layers``), bf16 in the weights' dtype,
  quantization through transformers' torchao integration (``TorchAoConfig`` in config.json, the
  weights stored quantized in model.safetensors). Changes no config can express are refused
  before any work (:meth:`Action.check_expressible`);
* from a torch module file: the state dict in ``model.safetensors`` plus the manifest;
  :func:`load_optimized` (exported as ``wattlens.advisor.load_optimized``) rebuilds it onto a fresh
  instance of the user's own module class: recorded shape/dtype changes, the weights (strictly),
  then quantization again (deterministic from the weights).

Every folder gets ``wattlens-optimization.json``: base model, actions with their parameters and
details, the claim checks, sizes, library versions.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wattlens.profiler.errors import BadInputError, ModelLoadError, WattlensError

MANIFEST_NAME = "wattlens-optimization.json"
WEIGHTS_NAME = "model.safetensors"
MANIFEST_FORMAT = "wattlens-optimization"
MANIFEST_VERSION = 2
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "tokenizer.model",
)
_HF_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
_FOLDER_HINT = "give a Hugging Face model folder (config.json + weights) or a file saved with torch.save(model)"


@dataclass
class LoadedModel:
    """A model plus what we learned loading it. ``model`` is in eval mode on CPU."""

    model: nn.Module
    path: Path
    kind: str  # "hf-folder" | "torch-module-file" | "wattlens-output"
    is_causal_lm: bool
    tokenizer: Any | None = None
    tokenizer_reason: str | None = None
    #: the original model this one derives from (itself unless it is a wattlens output)
    base: dict[str, Any] = field(default_factory=dict)
    #: manifest records of actions already applied to this model (for a wattlens output)
    prior_actions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_quantized(self) -> bool:
        config = getattr(self.model, "config", None)
        return getattr(config, "quantization_config", None) is not None or any(
            a.get("replay") == "on-load" for a in self.prior_actions)


# --------------------------------------------------------------------------- hashing and sizes


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_tree(path: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of every file under ``path`` (or of ``path`` itself), keyed by relative path."""
    root = Path(path)
    if root.is_file():
        return {root.name: sha256_file(root)}
    return {
        str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()
    }


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor really holds: a torchao tensor subclass counts its inner (int8 ...) data."""
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is not None and type(t) not in (torch.Tensor, nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def tensor_footprint(model: nn.Module) -> tuple[int, int]:
    """(elements, bytes) held by the model's weights and buffers, counting shared tensors once."""
    seen: set[int] = set()
    elements = nbytes = 0
    for m in model.modules():
        for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
            if id(t) not in seen:  # persistent tensors: ids stay unique while the model lives
                seen.add(id(t))
                elements += t.numel()
                nbytes += tensor_bytes(t)
    return elements, nbytes


# --------------------------------------------------------------------------- loading


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _auto_class(config: Any) -> tuple[Any, bool]:
    """The Auto class whose mapping names ``config.architectures[0]``; (class, is_causal_lm)."""
    import transformers
    from transformers.models.auto import modeling_auto as ma

    arch = (getattr(config, "architectures", None) or [None])[0]
    table = [
        ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "AutoModelForCausalLM"),
        ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", "AutoModelForMaskedLM"),
        ("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "AutoModelForSeq2SeqLM"),
        ("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "AutoModelForSequenceClassification"),
        ("MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", "AutoModelForTokenClassification"),
        ("MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES", "AutoModelForQuestionAnswering"),
        ("MODEL_FOR_PRETRAINING_MAPPING_NAMES", "AutoModelForPreTraining"),
        ("MODEL_MAPPING_NAMES", "AutoModel"),
    ]
    if arch:
        for mapping_name, auto_name in table:
            names = getattr(ma, mapping_name, {})
            flat = {n for v in names.values() for n in (v if isinstance(v, (tuple, list)) else (v,))}
            if arch in flat:
                return getattr(transformers, auto_name), auto_name == "AutoModelForCausalLM"
    return transformers.AutoModel, False


def _load_config(folder: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds
        raise ModelLoadError(
            f"{folder}/config.json cannot be read: {_first_line(exc)}",
            hint="check it is a transformers config.json from the same model as the weights",
        ) from exc


def _load_tokenizer(folder: Path) -> tuple[Any | None, str | None]:
    present = [n for n in TOKENIZER_FILES if (folder / n).is_file()]
    if not present:
        return None, f"no tokenizer files in {folder} (tokenizer.json, vocab.* ...)"
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder, local_files_only=True), None
    except Exception as exc:  # noqa: BLE001
        return None, f"tokenizer in {folder} does not load: {_first_line(exc)}"


def _load_hf_folder(folder: Path) -> tuple[nn.Module, bool]:
    config = _load_config(folder)
    auto, is_causal = _auto_class(config)
    if not any(p.name.endswith(_HF_WEIGHT_SUFFIXES) for p in folder.iterdir()):
        raise ModelLoadError(
            f"{folder} has a config.json but no weights file (model.safetensors or pytorch_model.bin)",
            hint="copy the weights next to config.json",
        )
    try:
        model, info = auto.from_pretrained(
            folder, local_files_only=True, dtype="auto", output_loading_info=True
        )
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(
            f"the model in {folder} does not load: {_first_line(exc)}",
            hint="check config.json and the weights come from the same, complete model",
        ) from exc
    problems = {k: sorted(info.get(k) or ()) for k in ("missing_keys", "mismatched_keys")}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        detail = "; ".join(f"{k.replace('_', ' ')}: {', '.join(map(str, v[:3]))}" for k, v in problems.items())
        raise ModelLoadError(
            f"the weights in {folder} do not match its config.json ({detail})",
            hint="the folder mixes files of different models; re-export it with save_pretrained",
        )
    return model, is_causal


PICKLE_RISK = (
    "unpickling a whole module runs code stored in the file, so a file from someone else can do "
    "anything your account can"
)


def _looks_like_torch_file(path: Path) -> bool:
    """A torch.save archive (zip: ``PK``) or a pickle of protocol ≥ 2 (``\\x80``), by its first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return head == b"PK" or head[:1] == b"\x80"


def _load_module_file(path: Path, *, trust_pickle: bool = False) -> nn.Module:
    """A whole module saved with ``torch.save(model)``.

    Tried first with ``weights_only=True`` (torch's restricted unpickler: tensors and plain
    containers, no code runs). A whole module needs the full unpickler, which runs code from the
    file: that is done only when the caller says the file is trusted (``--trust-pickle``).
    """
    check_model_file(path)
    if path.suffix == ".safetensors":
        raise ModelLoadError(
            f"{path} holds only weights, no architecture",
            hint="give the folder with its config.json instead of the .safetensors file",
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _looks_like_torch_file(path):
            raise ModelLoadError(f"{path} is not a readable torch file (neither a torch.save archive nor a pickle)",
                                 hint=_FOLDER_HINT) from exc
        if not trust_pickle:
            raise ModelLoadError(
                f"{path} is a pickled module and was not loaded: {PICKLE_RISK}",
                hint="if you trust where the file comes from, add --trust-pickle "
                "(or give a Hugging Face folder, which loads without pickle)",
            ) from exc
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001
            raise ModelLoadError(f"{path} is not a readable torch file: {_first_line(exc2)}",
                                 hint=_FOLDER_HINT) from exc2
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path} is not a readable torch file: {_first_line(exc)}", hint=_FOLDER_HINT) from exc
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict):
        raise ModelLoadError(
            f"{path} holds only weights (a state_dict), not a model",
            hint="save the whole module with torch.save(model) or give a Hugging Face folder",
        )
    raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a torch module", hint=_FOLDER_HINT)


def load_model(path: str | os.PathLike, *, trust_pickle: bool = False) -> LoadedModel:
    """Load MODEL (see the module docstring). Raises :class:`ModelLoadError` with the fix.

    A torch module file is unpickled with the full unpickler (which runs code from the file) only
    when ``trust_pickle`` is True; otherwise it is refused with the reason and the flag to pass.

    A wattlens output folder from a Hugging Face model loads like any transformers folder; one
    from a torch module file needs the user's class (:func:`load_optimized`) and is refused here.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"no such file or folder: {p}", hint=_FOLDER_HINT)
    p = p.resolve()
    if p.is_dir():
        if (p / MANIFEST_NAME).is_file():
            return _load_output(p)
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"{p} has no config.json, so it is not a Hugging Face model folder", hint=_FOLDER_HINT)
        model, is_causal = _load_hf_folder(p)
        tokenizer, reason = _load_tokenizer(p)
        return LoadedModel(
            model.eval(), p, "hf-folder", is_causal, tokenizer, reason,
            base={"kind": "hf-folder", "path": str(p), "class": type(model).__name__},
        )
    model = _load_module_file(p, trust_pickle=trust_pickle)
    return LoadedModel(
        model.eval(), p, "torch-module-file", False, None,
        "a torch module file has no tokenizer",
        base={"kind": "torch-module-file", "path": str(p), "class": type(model).__name__,
              "sha256": sha256_file(p)},
    )


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{folder / MANIFEST_NAME} is not readable JSON: {_first_line(exc)}",
                             hint="the folder is damaged; re-run wattlens optimize") from exc
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != MANIFEST_VERSION:
        raise ModelLoadError(
            f"{folder / MANIFEST_NAME} is not a version-{MANIFEST_VERSION} wattlens manifest",
            hint="re-run wattlens optimize with this version of wattlens",
        )
    return manifest


def _replay(model: nn.Module, records: list[dict[str, Any]], replays: set[str]) -> None:
    from wattlens.advisor.actions import parse_action

    for record in records:
        if record["replay"] in replays:
            parse_action(record["spec"]).replay_into(model, record["details"])


def _load_output(folder: Path) -> LoadedModel:
    manifest = read_manifest(folder)
    if manifest["layout"] != "transformers":
        raise ModelLoadError(
            f"{folder} holds the state dict of a torch module, which needs your module class to load",
            hint="load it with wattlens.advisor.load_optimized(folder, YourModel()) or optimize the original file",
        )
    model, is_causal = _load_hf_folder(folder)
    tokenizer, reason = _load_tokenizer(folder)
    return LoadedModel(model.eval(), folder, "wattlens-output", is_causal, tokenizer, reason,
                       base=manifest["base"], prior_actions=manifest["actions"])


def load_optimized(folder: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Load a folder written by ``wattlens optimize``, in eval mode.

    * from a Hugging Face model: the matching ``AutoModel*.from_pretrained(folder)`` (plain
      transformers does the same without wattlens); ``model`` must be None;
    * from a torch module file: give ``model``, a fresh instance of your own module class (or the
      original module); it is changed in place — recorded structure/dtype changes, the saved
      weights loaded strictly, quantization applied again — and returned.
    """
    path = Path(folder).expanduser().resolve()
    if not (path / MANIFEST_NAME).is_file():
        raise ModelLoadError(f"{path} is not a wattlens output (no {MANIFEST_NAME})",
                             hint="give the --out folder of wattlens optimize")
    manifest = read_manifest(path)
    if manifest["layout"] == "transformers":
        if model is not None:
            raise BadInputError(f"{path} is a transformers folder; it needs no model instance",
                                hint="call load_optimized(folder) or AutoModel*.from_pretrained(folder)")
        return _load_hf_folder(path)[0].eval()
    if model is None:
        raise BadInputError(f"{path} holds a state dict for your module class {manifest['base'].get('class')}",
                            hint="pass a fresh instance: load_optimized(folder, YourModel())")
    records = manifest["actions"]
    import safetensors.torch

    try:
        # no config.json beside a module's weights: config-replayed changes are rebuilt too
        _replay(model, records, {"structure", "dtype", "config"})
        missing, unexpected = safetensors.torch.load_model(model, path / WEIGHTS_NAME, strict=False)
    except WattlensError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"the weights in {path} do not fit {type(model).__name__}: {_first_line(exc)}",
                             hint=f"pass an instance of {manifest['base'].get('class')}, the class that was optimized") from exc
    if missing or unexpected:
        raise ModelLoadError(
            f"the weights in {path} do not fit {type(model).__name__} (missing {len(missing)}, unexpected {len(unexpected)})",
            hint=f"pass an instance of {manifest['base'].get('class')}, the class that was optimized")
    model.eval()
    _replay(model, records, {"on-load"})
    return model.eval()


# --------------------------------------------------------------------------- inputs and forward


@dataclass(frozen=True)
class ModelInputs:
    """One batch for a model: positional or keyword tensors, and how many samples it holds."""

    args: tuple[torch.Tensor, ...]
    kwargs: dict[str, torch.Tensor]
    n_samples: int
    description: str

    def to(self, device: str | torch.device) -> ModelInputs:
        return ModelInputs(
            tuple(a.to(device) for a in self.args),
            {k: v.to(device) for k, v in self.kwargs.items()},
            self.n_samples,
            self.description,
        )


def max_positions(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def random_inputs(model: nn.Module, batch_size: int, seq_len: int, *, seed: int = 0) -> ModelInputs:
    """Deterministic random inputs (seeded) shaped for ``model``.

    A transformers model gets token ids over its whole vocabulary; a plain module gets token ids
    if its first leaf layer is an Embedding, a float matrix if it is a Linear.
    """
    gen = torch.Generator().manual_seed(seed)
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int):
        limit = max_positions(model)
        seq = min(seq_len, limit) if limit else seq_len
        ids = torch.randint(0, vocab, (batch_size, seq), generator=gen)
        kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        return ModelInputs((), kwargs, batch_size,
                           f"seeded random token ids (seed {seed}, {batch_size}×{seq})")
    first = next((m for m in model.modules() if not list(m.children())), None)
    if isinstance(first, nn.Embedding):
        ids = torch.randint(0, first.num_embeddings, (batch_size, seq_len), generator=gen)
        return ModelInputs((ids,), {}, batch_size,
                           f"seeded random token ids (seed {seed}, {batch_size}×{seq_len})")
    if isinstance(first, nn.Linear):
        x = torch.randn(batch_size, first.in_features, generator=gen)
        return ModelInputs((x,), {}, batch_size,
                           f"seeded random normal inputs (seed {seed}, {batch_size}×{first.in_features})")
    raise BadInputError(
        f"cannot tell what input {type(model).__name__} takes (its first layer is "
        f"{type(first).__name__ if first else 'missing'})",
        hint="give a Hugging Face model folder, or a module whose first layer is an Embedding or Linear",
    )


def model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def forward_named(model: nn.Module, inputs: ModelInputs) -> tuple[str, torch.Tensor]:
    """Run one batch without gradients; return (field name, main output tensor).

    The field is ``logits`` when the model has them, else ``last_hidden_state``, else ``output``
    (a plain module's tensor or first tuple element). Float inputs are cast to the model's dtype
    (a bf16 model gets bf16 inputs).
    """
    dtype = model_dtype(model)
    args = tuple(a.to(dtype) if a.is_floating_point() else a for a in inputs.args)
    kwargs = dict(inputs.kwargs)
    config = getattr(model, "config", None)
    if getattr(config, "use_cache", False):
        kwargs["use_cache"] = False
    with torch.inference_mode():
        out = model(*args, **kwargs)
    for name in ("logits", "last_hidden_state"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return name, value
    if isinstance(out, torch.Tensor):
        return "output", out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return "output", out[0]
    raise BadInputError(f"{type(model).__name__} returned {type(out).__name__}, not a tensor",
                        hint="wattlens compares models by their main output tensor")


def forward(model: nn.Module, inputs: ModelInputs) -> torch.Tensor:
    """The main output tensor of one batch (see :func:`forward_named`)."""
    return forward_named(model, inputs)[1]


# --------------------------------------------------------------------------- saving


def _versions() -> dict[str, str]:
    versions = {"torch": torch.__version__}
    with contextlib.suppress(ImportError):
        import transformers

        versions["transformers"] = transformers.__version__
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        versions["wattlens"] = version("wattlens")
    return versions


_SOURCE_SUFFIXES = (".py", ".pyw", ".ipynb")


def check_model_file(path: str | os.PathLike) -> None:
    """Refuse, before any work, a MODEL that is a Python script or notebook (not a saved model)."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix.lower() in _SOURCE_SUFFIXES:
        kind = "a Jupyter notebook" if p.suffix.lower() == ".ipynb" else "a Python source file"
        raise ModelLoadError(
            f"{p} is {kind}, not a saved model: optimize reads a model, it does not run code",
            hint="give the Hugging Face folder your script loads (config.json + weights), or a file "
                 "your script writes with torch.save(model, 'model.pt')")


def check_out_dir(out_dir: str | os.PathLike, model_path: str | os.PathLike | None = None) -> Path:
    """Refuse an output folder that exists with files in it, or that lies inside the input model."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"{out} already exists and is not an empty folder",
                            hint="choose a new --out folder or remove the old one")
    if model_path is not None:
        src = Path(model_path).expanduser().resolve()
        if out == src or src in out.parents or (src.is_file() and out == src.parent):
            raise BadInputError(f"{out} is inside the input model {src}; the input is never written to",
                                hint="choose an --out folder outside the model folder")
    if not out.parent.is_dir():
        raise BadInputError(f"the parent folder of {out} does not exist", hint="create it first")
    return out


class OutputTakenError(BadInputError):
    """``out`` was free when checked and is taken when the copy is moved there (another run wrote
    it meanwhile): exit 2, nothing of this run is written, the other run's folder is left alone."""


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """A temp folder beside ``out`` that becomes ``out`` only if the block succeeds; raises
    :class:`OutputTakenError` when ``out`` has been filled meanwhile (the temp folder is removed)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        try:
            if out.exists():
                out.rmdir()  # empty (checked by check_out_dir); rename needs it gone or empty
            os.replace(tmp, out)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
            raise OutputTakenError(
                f"{out} already exists and is not an empty folder: another run wrote it while this one "
                "ran, and it is left as it is; nothing of this run was written",
                hint="choose a new --out folder (or remove the other one) and run again") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _copy_tokenizer(source: LoadedModel, folder: Path) -> None:
    if source.path.is_dir():
        for name in TOKENIZER_FILES:
            if (source.path / name).is_file():
                shutil.copy2(source.path / name, folder / name)


def write_model_files(folder: Path, *, source: LoadedModel, float_model: nn.Module,
                      quantization: Any | None = None) -> str:
    """Write the shippable model into ``folder``; return the layout ("transformers" | "state-dict").

    A transformers model is saved with ``save_pretrained``; with a quantization action, the float
    folder is reloaded through transformers' torchao integration (``TorchAoConfig``) and that
    quantized model is saved, so config.json carries the quantization config and the weights are
    stored quantized. A plain module gets its float state dict (quantization is re-applied by
    :func:`load_optimized`).
    """
    if hasattr(float_model, "save_pretrained") and source.kind != "torch-module-file":
        if quantization is None:
            float_model.save_pretrained(folder)
        else:
            from transformers import TorchAoConfig

            with tempfile.TemporaryDirectory(prefix=".wattlens-float-", dir=folder.parent) as tmp:
                float_model.save_pretrained(tmp)
                auto, _ = _auto_class(float_model.config)
                quantized = auto.from_pretrained(
                    tmp, local_files_only=True, dtype="auto",
                    quantization_config=TorchAoConfig(quant_type=quantization.ao_config()))
                quantized.save_pretrained(folder)
        _copy_tokenizer(source, folder)
        return "transformers"
    import safetensors.torch

    safetensors.torch.save_model(float_model, str(folder / WEIGHTS_NAME))
    return "state-dict"


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
    return path


def build_manifest(
    *,
    source: LoadedModel,
    records: list[dict[str, Any]],
    layout: str,
    base_model: nn.Module,
    candidate: nn.Module,
    folder: Path,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    base_elems, base_bytes = tensor_footprint(base_model)
    cand_elems, cand_bytes = tensor_footprint(candidate)
    files_bytes = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "created_unix_s": time.time(),
        "base": source.base,
        "input": {"path": str(source.path), "kind": source.kind},
        "actions": records,
        "layout": layout,
        "load_with": ("transformers AutoModel*.from_pretrained(folder)" if layout == "transformers"
                      else "wattlens.advisor.load_optimized(folder, YourModel())"),
        "sizes": {
            "base_params": base_elems,
            "base_tensor_bytes": base_bytes,
            "candidate_params": cand_elems,
            "candidate_tensor_bytes": cand_bytes,
            "saved_files_bytes": files_bytes,
        },
        "versions": _versions(),
    }
    if extra:
        manifest.update(extra)
    return manifest
