"""The agent names the local folder a Hugging Face model was loaded from, so the advisor's
commands can name it too; anything else (a hub name, a config-built model) is no folder."""

from types import SimpleNamespace

from wattlens.advisor.recommend import optimize_command
from wattlens.profiler.agent.tracker import _source_folder


def test_only_an_existing_local_folder_is_a_source(tmp_path, monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "my model"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16)).save_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    loaded = GPT2LMHeadModel.from_pretrained("my model")  # relative, as a user's script may say
    assert _source_folder(loaded) == str(folder)  # made absolute: the advice is read elsewhere
    built = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16))
    assert _source_folder(built) is None
    assert _source_folder(SimpleNamespace(config=SimpleNamespace(_name_or_path="gpt2"))) is None  # a hub name
    assert _source_folder(SimpleNamespace()) is None  # no transformers model
    # under DDP (or torch.compile) the main model is the wrapper: the folder is its inner model's
    assert _source_folder(SimpleNamespace(module=loaded)) == str(folder)
    assert _source_folder(SimpleNamespace(_orig_mod=SimpleNamespace(module=loaded))) == str(folder)


def test_the_command_quotes_a_folder_and_puts_the_copy_beside_it():
    assert optimize_command("prune-mlp:0.25") == ("wattlens optimize MODEL --action prune-mlp:0.25 "
                                                  "--out MODEL-prune-mlp-025")
    assert optimize_command("bf16", "/data/my model/") == ("wattlens optimize '/data/my model/' --action bf16 "
                                                           "--out '/data/my model-bf16'")


def test_the_apply_dialog_opens_on_the_folder_the_card_names(tmp_path):
    import dataclasses

    from wattlens.app.gui.models.advisor_model import RecommendationView

    folder = tmp_path / "my model"
    folder.mkdir()
    card = RecommendationView(rule="bf16", title="t", rationale="r", evidence=(), saving_text="s", method_text="m",
                              saving_detail="d", confidence_text="c", risk_text="r", action="bf16",
                              command=optimize_command("bf16", str(folder)))
    assert card.model_folder == str(folder)
    assert dataclasses.replace(card, command=optimize_command("bf16")).model_folder is None  # MODEL
    assert dataclasses.replace(card, command=optimize_command("bf16", str(tmp_path / "gone"))).model_folder is None
    assert dataclasses.replace(card, command=None).model_folder is None
