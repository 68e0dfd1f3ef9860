"""RWKV-7 against the official package (rwkv 0.8.32, RWKV_V7_ON=1, `cpu fp32`) on random float32
checkpoints of two shapes whose LoRA ranks differ from the released ones (tests/fixtures/reference/
rwkv7-{a,b}, made by tools/make_reference.py --arch 7), read as rwkv.cpp files (fused lerps,
transposed LoRA factors, written by the test writer) and as our converter's llama.cpp-layout GGUF
(`rwkv-tui convert` of the .pth): 64 decode steps, one 64-token sequence call and the final states agree
within 1e-4·max|logit| for F32 files and 1e-2 for F16 ones; sequence mode equals one token at a time
within float rounding, across chunk boundaries too."""

from __future__ import annotations

import pytest

from runtime.convert import convert
from runtime.model.loader import load_weights
from runtime.model.model import Model
from runtime.quant.types import DType
from tests.support.reference import load_reference_v7, read_pth_arrays
from tests.support.reference_checks import (
    check_decode,
    check_one_sequence_call,
    check_sequence_equals_steps,
)
from tests.support.reference_checks import (
    rel as _rel,
)
from tests.support.reference_checks import (
    state_rel as _state_rel,
)
from tests.support.rwkvcpp_writer import write_v7_model

REFS = ["rwkv7-a", "rwkv7-b"]


@pytest.fixture(scope="module", params=[(r, t, c) for r in REFS for t in (DType.F32, DType.F16)
                                        for c in ("rwkvcpp", "gguf")],
                ids=lambda p: f"{p[0]}-{p[1].name}-{p[2]}")
def ref_model(request, tmp_path_factory):
    name, dtype, container = request.param
    ref = load_reference_v7(name)
    folder = tmp_path_factory.mktemp("v7")
    if container == "gguf":
        path = folder / f"{name}-{dtype.name}.gguf"
        convert(ref.pth_path, path, dtype)
    else:
        path = write_v7_model(folder / f"{name}-{dtype.name}.bin", read_pth_arrays(ref.pth_path), dtype)
    model = Model(load_weights(path, chunk=16), threads=2)  # 64 tokens cross chunk boundaries
    yield ref, dtype, model
    model.close()


def test_shape_and_ranks_read_from_the_file(ref_model):
    ref, _, model = ref_model
    assert (model.arch_name, model.n_layer, model.n_embd, model.n_vocab) == ("rwkv7", ref.n_layer, ref.n_embd,
                                                                             ref.n_vocab)
    assert model.spec.ranks == ref.ranks and model.spec.head_size == ref.head_size


def test_decode_matches_official_implementation(ref_model):
    check_decode(*ref_model)


def test_one_sequence_call_matches_official_implementation(ref_model):
    check_one_sequence_call(*ref_model)


def test_sequence_mode_equals_one_token_at_a_time(ref_model):
    ref, _, model = ref_model
    check_sequence_equals_steps(ref, model)


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_counts_other_than_two_agree(tmp_path, threads):
    """More threads than heads (rwkv7-b has 2) leaves some threads without per-head work."""
    ref = load_reference_v7("rwkv7-b")
    path = write_v7_model(tmp_path / "b.bin", read_pth_arrays(ref.pth_path), DType.F32)
    with Model(load_weights(path, chunk=16), threads=threads) as model:
        every, state = model.forward_all(ref.tokens)
        assert max(_rel(every[i], ref.logits_seq_all[i]) for i in range(len(ref.tokens))) <= 1e-4
        assert _state_rel(state.data, ref.state_seq, ref.n_layer) <= 1e-4
