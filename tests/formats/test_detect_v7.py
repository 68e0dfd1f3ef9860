"""RWKV-7 detection: head size and LoRA ranks from the shapes, every malformed shape named."""

import numpy as np
import pytest

from runtime.errors import ModelFileError
from runtime.formats.detect import LoraRanks, detect_architecture
from runtime.formats.gguf_rwkv7 import LORA_LEAVES
from tests.support.synthetic import v7_state_dict


def shapes_of(sd):
    return {k: v.shape for k, v in sd.items()}


def transposed(shapes):
    return {k: (s[::-1] if k.rsplit(".", 1)[-1] in LORA_LEAVES else s) for k, s in shapes.items()}


@pytest.mark.parametrize("layer0_v", [False, True])
def test_version_head_size_and_ranks_come_from_the_shapes(layer0_v):
    sd = v7_state_dict(n_layer=3, n_embd=96, head_size=32, n_vocab=70, ranks=(8, 24, 40, 16), layer0_v=layer0_v)
    arch = detect_architecture("m.pth", shapes_of(sd))
    assert (arch.version, arch.n_layer, arch.n_embd, arch.n_vocab, arch.n_ffn) == ("7", 3, 96, 70, 384)
    assert (arch.head_size, arch.n_head) == (32, 3)
    assert arch.lora == LoraRanks(decay=8, iclr=24, value=40, gate=16)


def test_transposed_lora_and_flat_vectors_with_the_head_size_from_metadata():
    shapes = transposed(shapes_of(v7_state_dict(ranks=(8, 24, 40, 16))))
    shapes = {k: ((int(np.prod(s)),) if len(s) == 3 or k.endswith("r_k") else s) for k, s in shapes.items()}
    with pytest.raises(ModelFileError, match=r"'blocks\.0\.att\.w1' has shape"):  # read the wrong way round
        detect_architecture("m.gguf", shapes, head_size=64)
    arch = detect_architecture("m.gguf", shapes, lora_transposed=True, head_size=64)
    assert arch.lora == LoraRanks(8, 24, 40, 16) and arch.head_size == 64


def test_layer0_dummies_of_another_rank_are_ignored():
    sd = v7_state_dict(ranks=(8, 24, 40, 16))
    sd["blocks.0.att.v0"], sd["blocks.0.att.v1"], sd["blocks.0.att.v2"] = (
        sd["blocks.0.att.a0"], sd["blocks.0.att.a1"], sd["blocks.0.att.a2"])
    assert detect_architecture("m.pth", shapes_of(sd)).lora.value == 40


def test_single_layer_without_layer0_v_has_no_value_rank():
    assert detect_architecture("m.pth", shapes_of(v7_state_dict(n_layer=1))).lora.value == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda sd: sd.pop("blocks.1.att.k_a"), "missing blocks.1.att.k_a"),
        (lambda sd: sd.pop("blocks.1.att.g2"), "missing blocks.1.att.g2"),
        (lambda sd: sd.update({"blocks.1.att.a2": np.zeros((32, 128), np.float32)}),
         r"LoRA pair 'blocks.1.att.a1' \(rank 40\) and 'blocks.1.att.a2' \(rank 32\) have mismatched ranks"),
        (lambda sd: sd.update({"blocks.1.att.w1": np.zeros((128, 8)), "blocks.1.att.w2": np.zeros((8, 128))}),
         "'blocks.1.att.w1' has rank 8, but layer 0's has rank 24"),
        (lambda sd: sd.update({f"blocks.{i}.att.r_k": np.zeros((2, 48)) for i in range(2)}),
         "n_embd 128 is not a multiple of the head size 48"),
        (lambda sd: sd.update({"blocks.1.att.k_k": np.zeros((1, 1, 64))}),
         r"'blocks.1.att.k_k' has shape \(1, 1, 64\), expected \(128,\)"),
        (lambda sd: sd.update({"blocks.1.att.key.weight": np.zeros((128, 64))}), "'blocks.1.att.key.weight'"),
        (lambda sd: sd.update({"blocks.1.att.gate.weight": np.zeros((128, 128))}),
         "unexpected tensors for RWKV-7: blocks.1.att.gate.weight"),
    ],
)
def test_malformed_files_are_refused_naming_the_problem(change, message):
    sd = v7_state_dict()
    change(sd)
    with pytest.raises(ModelFileError, match=message):
        detect_architecture("bad.pth", shapes_of(sd))
