"""Small real models for the advisor tests (imported by the other test_actions_/test_verify_ files).

No tests here. Models are built from tiny configs and saved with ``save_pretrained`` so the loader
path under test is the real one.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch


def tiny_gpt2(seed: int = 0, n_layer: int = 2, n_embd: int = 64, n_head: int = 4, n_inner: int | None = None):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=256,
                        n_positions=64, n_inner=n_inner, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                        intermediate_size=128, vocab_size=256, max_position_embeddings=64)
    return BertModel(config).eval()


def save_hf(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


def save_char_tokenizer(folder: Path) -> None:
    """A character-level tokenizer (ids 1..26 for a..z, 0 unknown) built locally, no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", *"abcdefghijklmnopqrstuvwxyz"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(folder)


def token_ids(batch: int = 2, seq: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (batch, seq), generator=torch.Generator().manual_seed(seed))


def run(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        out = model(input_ids=ids)
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).float()


def int8_warns():
    """Kept for callers: torchao (the one backend) emits no deprecation warning."""
    return contextlib.nullcontext()


def state_snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model, snapshot: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == snapshot.keys() and all(
        now[k].dtype == v.dtype and now[k].shape == v.shape and torch.equal(now[k], v)
        for k, v in snapshot.items()
    )
