"""RWKV-6 and RWKV-5.2 against the official package (rwkv 0.8.32, RWKV_V7_ON unset, `cpu fp32`) on
random float32 checkpoints of two shapes each (tests/fixtures/reference/rwkv6-{a,b}, rwkv5-{a,b}, made
by tools/make_reference.py --arch 6 / --arch 5; RWKV-6's LoRA ranks unlike the released 32/64, -b's
not whole 32-value blocks, heads of 64 and 32), read as rwkv.cpp files (its converter's transforms,
written by the test writer) and as `rwkv-tui convert`'s GGUF of the .pth (llama.cpp's rwkv6 layout,
our rwkv5 one): 64 decode steps, one 64-token sequence call and the final states agree
within 1e-4·max|logit| for F32 files and 1e-2 for F16 ones; sequence mode equals one token at a time
within float rounding, across chunk boundaries too. A llama.cpp rwkv6 GGUF whose output and FFN-value
weights are divided by 2^(layer // n) (`rescale_every_n_layers` n, written by the test writer) gives the
.pth's logits: the runtime halves the residual after every n-th layer for it (and not for files whose
key is 0)."""

from __future__ import annotations

import pytest

from runtime.convert import convert
from runtime.model.loader import load_weights
from runtime.model.model import Model
from runtime.quant.types import DType
from tests.support.llamacpp_writer import write_llamacpp_rwkv6
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
from tests.support.rwkvcpp_writer import write_v56_model

REFS = ["rwkv6-a", "rwkv6-b", "rwkv5-a", "rwkv5-b"]


def _open(ref, dtype: DType, folder, threads: int = 2, container: str = "rwkvcpp") -> Model:
    if container == "gguf":
        path = folder / f"{ref.name}-{dtype.name}.gguf"
        convert(ref.pth_path, path, dtype)
    else:
        path = write_v56_model(folder / f"{ref.name}-{dtype.name}.bin", read_pth_arrays(ref.pth_path), dtype)
    return Model(load_weights(path, chunk=16), threads=threads)  # 64 tokens cross chunk boundaries


@pytest.fixture(scope="module", params=[(r, t, c) for r in REFS for t in (DType.F32, DType.F16)
                                        for c in ("rwkvcpp", "gguf")],
                ids=lambda p: f"{p[0]}-{p[1].name}-{p[2]}")
def ref_model(request, tmp_path_factory):
    name, dtype, container = request.param
    ref = load_reference_v7(name)
    model = _open(ref, dtype, tmp_path_factory.mktemp("v56"), container=container)
    yield ref, dtype, model
    model.close()


def test_shape_and_ranks_read_from_the_file(ref_model):
    ref, _, model = ref_model
    arch = "rwkv6" if ref.name.startswith("rwkv6") else "rwkv5"
    assert (model.arch_name, model.n_layer, model.n_embd, model.n_vocab) == (arch, ref.n_layer, ref.n_embd,
                                                                            ref.n_vocab)
    assert model.spec.head_size == ref.head_size and model.spec.ranks == ref.ranks


def test_decode_matches_official_implementation(ref_model):
    check_decode(*ref_model)


def test_one_sequence_call_matches_official_implementation(ref_model):
    check_one_sequence_call(*ref_model)


def test_sequence_mode_equals_one_token_at_a_time(ref_model):
    ref, _, model = ref_model
    check_sequence_equals_steps(ref, model)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("name", ["rwkv6-b", "rwkv5-b"])
def test_thread_counts_other_than_two_agree(tmp_path, threads, name):
    """rwkv*-b have 3 heads: with 2 threads one thread has two heads, with 3 one each."""
    ref = load_reference_v7(name)
    with _open(ref, DType.F32, tmp_path, threads) as model:
        every, state = model.forward_all(ref.tokens)
        assert max(_rel(every[i], ref.logits_seq_all[i]) for i in range(len(ref.tokens))) <= 1e-4
        assert _state_rel(state.data, ref.state_seq, ref.n_layer) <= 1e-4


@pytest.mark.parametrize(("every", "bound"), [(2, 1e-4), (1, 1e-3)])
def test_rescaled_llamacpp_gguf_gives_the_pths_logits(tmp_path, every, bound):
    """rwkv6-b has 3 layers: every=2 divides the weights by 1, 1, 2 and the residual reaches the head
    halved once; every=1 divides them by 1, 2, 4 and the residual is 1/8 at the end. A LayerNorm of
    x/s is one of x with eps·s² (1e-5 → 64e-5 for s = 8), a change of about 3e-4 here that any runtime of
    such files shows (llama.cpp alike); for s = 2 it stays within the F32 bound."""
    ref = load_reference_v7("rwkv6-b")
    sd = read_pth_arrays(ref.pth_path)
    path = write_llamacpp_rwkv6(tmp_path / "r.gguf", sd, ref.n_layer, ref.head_size, rescale_every=every)
    with Model(load_weights(path, chunk=16), threads=2) as model:
        assert model.spec.rescale_every == every
        every_logits, _ = model.forward_all(ref.tokens)
    assert max(_rel(every_logits[i], ref.logits_seq_all[i]) for i in range(len(ref.tokens))) <= bound


def test_the_rescale_key_is_what_makes_the_difference(tmp_path):
    """The same rescaled weights with the key 0: the residual is not halved and the logits are wrong;
    unrescaled weights with the key 0 (what our converter writes) are right."""
    ref = load_reference_v7("rwkv6-b")
    sd = read_pth_arrays(ref.pth_path)
    wrong = write_llamacpp_rwkv6(tmp_path / "w.gguf", sd, ref.n_layer, ref.head_size, rescale_every=1, rescale_key=0)
    plain = write_llamacpp_rwkv6(tmp_path / "p.gguf", sd, ref.n_layer, ref.head_size)
    with Model(load_weights(wrong), threads=2) as model:
        assert model.spec.rescale_every == 0
        logits, _ = model.forward(ref.tokens)
    assert _rel(logits, ref.logits_seq) > 1e-2
    with Model(load_weights(plain), threads=2) as model:
        logits, _ = model.forward(ref.tokens)
    assert _rel(logits, ref.logits_seq) <= 1e-4


def test_converting_a_rescaled_llamacpp_gguf_keeps_its_logits(tmp_path):
    """Re-quantizing (or re-writing) a llama.cpp rwkv6 GGUF whose weights were divided for
    `rescale_every_n_layers` 2 gives a file whose logits are still the .pth's: the written file says
    how its weights were divided, as the source did."""
    ref = load_reference_v7("rwkv6-b")
    sd = read_pth_arrays(ref.pth_path)
    src = write_llamacpp_rwkv6(tmp_path / "r.gguf", sd, ref.n_layer, ref.head_size, rescale_every=2)
    out = tmp_path / "r-f32.gguf"
    convert(src, out, DType.F32)
    with Model(load_weights(out, chunk=16), threads=2) as model:
        assert model.spec.rescale_every == 2
        logits, _ = model.forward_all(ref.tokens)
    assert max(_rel(logits[i], ref.logits_seq_all[i]) for i in range(len(ref.tokens))) <= 1e-4
