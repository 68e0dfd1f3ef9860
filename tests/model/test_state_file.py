"""State-tuned starting states: BlinkDL's state-tuning `.pth` (blocks.N.att.time_state, (H, N, N)) read
into a `State`, transposed for RWKV-5.2/6 as the official package does, checked against the model;
`rwkv-tui add-state` registers one for a model and writes nothing when it does not fit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.errors import ModelFileError
from runtime.model.loader import load_weights
from runtime.model.model import Model
from runtime.model.state_file import model_architecture, starting_state, time_states_of
from runtime.quant.types import DType
from runtime.registry.states import load_states, states_for, states_path
from tests.support.reference import load_reference_v7, read_pth_arrays
from tests.support.rwkvcpp_writer import write_v4_model, write_v7_model, write_v56_model
from tests.support.synthetic import v4_state_dict
from tests.support.torch_writer import write_pth
from tui.cli import main as cli

TEXT = [5, 17, 80, 3, 3, 60, 11, 200, 7]


@pytest.fixture(scope="module", params=["rwkv6-b", "rwkv5-b", "rwkv7-b"])
def model(request, tmp_path_factory):
    ref = load_reference_v7(request.param)
    folder = tmp_path_factory.mktemp("states")
    write = write_v7_model if request.param.startswith("rwkv7") else write_v56_model
    path = write(folder / f"{request.param}.bin", read_pth_arrays(ref.pth_path), DType.F32)
    with Model(load_weights(path), threads=2) as m:
        yield m


def _known_state(model):
    """The state after reading TEXT, with its token-shift rows zeroed (state files hold only the WKV
    matrices), and the state file BlinkDL's tooling would hold for it."""
    _, state = model.forward(TEXT)
    rows = state.data.reshape(model.n_layer, -1, model.n_embd)
    rows[:, :2] = 0
    return state, time_states_of(state, model_architecture(model))


def test_a_state_file_made_from_a_known_state_reproduces_it_exactly(model, tmp_path):
    state, tensors = _known_state(model)
    path = write_pth(tmp_path / "persona.pth", tensors, dtype="float32")
    start = starting_state(path, model)
    assert start.arch == model.arch_name and start.fingerprint == model.fingerprint
    assert np.array_equal(start.data, state.data)
    want, _ = model.forward([42, 9], state)
    got, _ = model.forward([42, 9], start)
    assert np.array_equal(got, want)


def test_rwkv6_files_hold_the_transpose_of_the_runtime_matrix(model, tmp_path):
    """As the package loads them (time_state.transpose(1, 2)) for RWKV-5/6; RWKV-7 as stored."""
    state, tensors = _known_state(model)
    N = model.spec.head_size
    layer0 = state.data[2 : 2 + N].reshape(-1, N, N)
    file0 = tensors["blocks.0.att.time_state"]
    assert np.array_equal(file0, layer0.transpose(0, 2, 1) if model.version in ("5.2", "6") else layer0)


def test_a_state_of_another_shape_is_refused_naming_the_file(model, tmp_path):
    _, tensors = _known_state(model)
    fewer = dict(list(tensors.items())[:-1])
    path = write_pth(tmp_path / "short.pth", fewer, dtype="float32")
    with pytest.raises(ModelFileError, match=rf"short\.pth: this state has {model.n_layer - 1} layers"):
        starting_state(path, model)
    wrong = {k: np.zeros((1, 8, 8), np.float32) for k in tensors}
    path = write_pth(tmp_path / "narrow.pth", wrong, dtype="float32")
    with pytest.raises(ModelFileError, match=r"narrow\.pth: .*of \(1, 8, 8\), but"):
        starting_state(path, model)


def test_damaged_state_files_are_refused(tmp_path, model):
    _, tensors = _known_state(model)
    bad = dict(tensors)
    bad["blocks.0.att.time_state"] = np.full_like(bad["blocks.0.att.time_state"], np.nan)
    with pytest.raises(ModelFileError, match="NaN"):
        starting_state(write_pth(tmp_path / "nan.pth", bad, dtype="float32"), model)
    gap = {k: v for k, v in tensors.items() if k != "blocks.0.att.time_state"}
    with pytest.raises(ModelFileError, match="layer 0 is missing"):
        starting_state(write_pth(tmp_path / "gap.pth", gap, dtype="float32"), model)
    model_file = write_pth(tmp_path / "weights.pth", {"emb.weight": np.zeros((4, 8), np.float32)}, dtype="float32")
    with pytest.raises(ModelFileError, match=r"no blocks\.N\.att\.time_state"):
        starting_state(model_file, model)


def test_add_state_registers_a_fitting_file_and_refuses_others(model, tmp_path, capsys):
    _, tensors = _known_state(model)
    good = write_pth(tmp_path / "persona.pth", tensors, dtype="float32")
    before = load_states()
    assert cli(["add-state", str(good), "--model", str(model.path), "--name", f"p-{model.arch_name}"]) == 0
    assert f"added state p-{model.arch_name}" in capsys.readouterr().out
    mine = states_for(str(model.path.resolve()))
    assert [e.name for e in mine if e.name == f"p-{model.arch_name}"] == [f"p-{model.arch_name}"]
    assert len(load_states()) == len(before) + 1
    # the same name again, a file of another shape: exit 2, the registry unchanged
    assert cli(["add-state", str(good), "--model", str(model.path), "--name", f"p-{model.arch_name}"]) == 2
    assert "already has a state" in capsys.readouterr().err
    short = write_pth(tmp_path / "short.pth", dict(list(tensors.items())[:-1]), dtype="float32")
    assert cli(["add-state", str(short), "--model", str(model.path)]) == 2
    assert "short.pth" in capsys.readouterr().err
    assert len(json.loads(states_path().read_text())["states"]) == len(before) + 1


def test_add_state_for_an_rwkv4_model_is_refused_and_writes_nothing(tmp_path, capsys):
    v4 = write_v4_model(tmp_path / "v4.bin", v4_state_dict(n_layer=2, n_embd=64), DType.F32)
    state = write_pth(tmp_path / "s.pth", {f"blocks.{i}.att.time_state": np.zeros((1, 64, 64), np.float32)
                                           for i in range(2)}, dtype="float32")
    existed = states_path().exists()
    assert cli(["add-state", str(state), "--model", str(v4)]) == 2
    assert "RWKV-4 model, which has no state-tuned starting states" in capsys.readouterr().err
    assert states_path().exists() == existed
