"""RWKV-7 converted to a quantized type stores its LoRA factors in Q8_0 where their rows are whole blocks
(first factors: rows of C; second factors: rows of the rank, matvec_q8short.py), and the model computes
what an F32 model holding the very values the file stores computes: decoding token by token (matvec,
x quantized to int16) and as one sequence call (matmul), on 2 threads."""

from __future__ import annotations

import numpy as np

from runtime.convert import convert
from runtime.formats.checkpoint import open_checkpoint
from runtime.model.arch.rwkv7 import Mat
from runtime.model.model import load_model
from runtime.quant.types import DType
from tests.model.test_forward import FLOAT_TOLERANCE, INT16_TOLERANCE
from tests.support.synthetic import v7_state_dict
from tests.support.torch_writer import write_pth

LORA = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")
LORA_SLOTS = (Mat.W1, Mat.W2, Mat.A1, Mat.A2, Mat.V1, Mat.V2, Mat.G1, Mat.G2)
TOKENS = [5, 17, 300, 3, 3, 64, 511, 0, 42]


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got.astype(np.float64) - want)) / np.max(np.abs(want)))


def test_q8_0_lora_factors_compute_what_their_stored_values_do(tmp_path) -> None:
    sd = v7_state_dict(n_layer=2, n_embd=256, n_vocab=512, ranks=(64, 32, 96, 128), seed=5)
    write_pth(tmp_path / "m.pth", sd, dtype="float32")
    convert(tmp_path / "m.pth", tmp_path / "q.gguf", "q5_1")
    ckpt = open_checkpoint(tmp_path / "q.gguf")
    lora = [n for n in sd if n.rsplit(".", 1)[-1] in LORA]
    assert lora and {ckpt.tensors[n].dtype for n in lora} == {DType.Q8_0}
    # the oracle: every tensor as the file stores it, decoded to float32, in the source's orientation
    oracle = {}
    for name, want in sd.items():
        value = ckpt.tensors[name].numpy()
        oracle[name] = np.ascontiguousarray(value.T if name in lora else value).reshape(want.shape)
    write_pth(tmp_path / "o.pth", oracle, dtype="float32")
    convert(tmp_path / "o.pth", tmp_path / "oracle.gguf", "f32")
    with load_model(tmp_path / "q.gguf", threads=2) as model, load_model(tmp_path / "oracle.gguf", threads=2) as ref:
        assert {types[m] for types in model.spec.layer_types[1:] for m in LORA_SLOTS} == {DType.Q8_0}
        state, want_state = model.new_state(), ref.new_state()
        for tok in TOKENS:
            got, state = model.forward([tok], state)
            want, want_state = ref.forward([tok], want_state)
            assert _rel(got, want) <= INT16_TOLERANCE, (tok, _rel(got, want))
        got, got_state = model.forward(TOKENS)
        want, want_seq_state = ref.forward(TOKENS)
        assert _rel(got, want) <= INT16_TOLERANCE  # the head multiplies one row (matvec)
        assert _rel(got_state.data, want_seq_state.data) <= FLOAT_TOLERANCE
