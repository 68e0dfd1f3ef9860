"""The compiled forward pass for every common weight type against the official fixtures and numpy.

For F32, F16, Q8_0, Q5_1 and Q4_0 layer matrices (head included) the tiny reference model is run
for 64 decode steps and one 64-token sequence call, on 2 threads, and compared with two oracles:

* the numpy RWKV-4 (tests/support/numpy_rwkv.py) on the very weights the file holds (each matrix
  quantized and decoded back with runtime.quant.codec): the gap is the runtime's own arithmetic
  (float rounding, or the int16 activations of matvec_int16.py on AVX2 hosts), whatever the type;
* the official package's logits (tests/fixtures/reference): the gap is what the weight type costs.

This is the core of what `tools/arm64_check.py` runs under emulation for every arm64 CPU model, and
it runs on every host as an ordinary test.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.jit.kernels.matvec_int16 import int16_variant
from runtime.model.model import load_model
from runtime.quant.codec import quantize, to_float32
from runtime.quant.types import DType
from tests.model.test_forward import FLOAT_TOLERANCE, INT16_TOLERANCE
from tests.support import numpy_rwkv
from tests.support.gguf_model import write_model_gguf
from tests.support.reference import Reference, load_reference, read_pth_arrays

TYPES = [DType.F32, DType.F16, DType.Q8_0, DType.Q5_1, DType.Q4_0]
# max|runtime - official fp32| / max|logit|: F32 is the runtime's 1e-4 bound, F16 its 1e-2 bound;
# the quantized types are bounded by twice the gap the numpy oracle itself shows on those weights
OFFICIAL_BOUND = {DType.F32: 1e-4, DType.F16: 1e-2}


def oracle_bound(dtype: DType, decoding: bool) -> float:
    """max|runtime - numpy on the same weights| / max|logit|: float rounding, except where decoding
    multiplies int16 activations (matvec_int16.py, AVX2 hosts; see tests/model/test_forward.py)."""
    return INT16_TOLERANCE if decoding and int16_variant(dtype) is not None else FLOAT_TOLERANCE


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got.astype(np.float64) - want)) / np.max(np.abs(want)))


def _as_stored(weights: dict[str, np.ndarray], dtype: DType) -> dict[str, np.ndarray]:
    """The weights as a file with `dtype` matrices holds them (vectors stay F32)."""
    out = {}
    for name, value in weights.items():
        v = np.asarray(value, np.float32)
        stored = v.ndim == 2 and not name.startswith("emb.")
        out[name] = to_float32(quantize(v, dtype), dtype) if stored else v
    return out


@pytest.fixture(scope="module")
def ref() -> Reference:
    return load_reference("tiny")


@pytest.fixture(scope="module", params=TYPES, ids=lambda t: t.name)
def typed(request, ref, tmp_path_factory):
    """(dtype, model, numpy logits after each token, numpy final state) for one weight type."""
    dtype = request.param
    weights = read_pth_arrays(ref.pth_path)
    path = write_model_gguf(tmp_path_factory.mktemp(dtype.name) / "tiny.gguf", weights, dtype,
                            emb_ln0=ref.emb_ln0)
    oracle = numpy_rwkv.prepare(_as_stored(weights, dtype), emb_ln0=ref.emb_ln0)
    every, state = numpy_rwkv.forward_each(oracle, ref.tokens.tolist())
    with load_model(path, threads=2) as model:
        yield dtype, model, every, state


def test_decode_matches_numpy_and_official(ref, typed):
    dtype, model, every, _ = typed
    state = model.new_state()
    got = []
    for tok in ref.tokens:
        logits, state = model.forward([int(tok)], state)
        got.append(logits)
    got = np.stack(got)
    assert _rel(got, every) <= oracle_bound(dtype, decoding=True)
    official = _rel(got, ref.logits_decode)
    bound = OFFICIAL_BOUND.get(dtype, 2 * _rel(every, ref.logits_decode))
    assert official <= bound, (dtype.name, official, bound)
    if dtype not in OFFICIAL_BOUND:
        # the numpy check has teeth: the stored codes change the logits far beyond its bound, so a
        # runtime that decoded them wrongly (or ignored them) would fail it
        assert _rel(every, ref.logits_decode) > 10 * INT16_TOLERANCE


def test_sequence_call_matches_numpy_and_official(ref, typed):
    dtype, model, every, state = typed
    logits, got_state = model.forward(ref.tokens)
    assert _rel(logits, every[-1]) <= oracle_bound(dtype, decoding=True)  # the head multiplies one row
    assert _rel(got_state.data.reshape(state.shape), state) <= oracle_bound(dtype, decoding=False)
    bound = OFFICIAL_BOUND.get(dtype, 2 * _rel(every[-1], ref.logits_seq))
    assert _rel(logits, ref.logits_seq) <= bound

