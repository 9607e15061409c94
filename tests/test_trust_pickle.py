"""Issue 9 item 2: a pickled module runs code when it is unpickled, so it is loaded only with
``--trust-pickle``; without it, a one-line refusal (exit 2) and nothing from the file runs."""

import pickle

import pytest
import torch
from torch import nn

from tests.conftest import run_cli
from wattlens.advisor.modelio import load_model
from wattlens.profiler.errors import ModelLoadError


class _Payload:
    """Unpickling this creates ``marker`` (what an attacker's file could do instead)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _torch_payload(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"model": _Payload(tmp_path / "marker")}, p)
    return p


def _plain_payload(tmp_path):
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps(_Payload(tmp_path / "marker")))
    return p


@pytest.mark.parametrize("make", [_torch_payload, _plain_payload])
def test_payload_does_not_run_without_trust_pickle(tmp_path, make):
    path = make(tmp_path)
    r = run_cli("optimize", str(path), "--action", "quantize-int8", "--out", str(tmp_path / "out"),
                "--db", str(tmp_path / "w.db"))
    assert r.returncode == 2, r.stderr
    assert not (tmp_path / "marker").exists()
    last = r.stderr.strip().splitlines()[-1]
    assert "--trust-pickle" in last and "runs code" in last
    assert not (tmp_path / "out").exists()


def test_api_refuses_a_pickled_module_unless_trusted(tmp_path):
    p = tmp_path / "net.pt"
    torch.save(nn.Sequential(nn.Linear(4, 2)), p)
    with pytest.raises(ModelLoadError) as err:
        load_model(p)
    assert "--trust-pickle" in str(err.value) and err.value.exit_code == 2
    assert isinstance(load_model(p, trust_pickle=True).model, nn.Sequential)


def test_trusted_pickle_loads_and_optimizes(tmp_path):
    p = tmp_path / "net.pt"
    torch.save(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)), p)
    r = run_cli("optimize", str(p), "--trust-pickle", "--action", "prune-unstructured:0.5",
                "--out", str(tmp_path / "out"), "--rounds", "1", "--db", str(tmp_path / "w.db"), timeout=600)
    assert r.returncode == 0, r.stderr
