"""Architecture detection from tensor names and shapes."""

import pytest

from runtime.errors import ModelFileError, UnsupportedModelError
from runtime.formats.detect import detect_architecture, v4_tensor_shapes
from tests.support.synthetic import v4_state_dict, v56_state_dict


def shapes_of(sd):
    return {k: v.shape for k, v in sd.items()}


def test_rwkv4_is_recognised_with_its_dimensions():
    arch = detect_architecture("m.pth", shapes_of(v4_state_dict(n_layer=3, n_embd=64, n_vocab=100)))
    assert (arch.version, arch.n_layer, arch.n_embd, arch.n_vocab, arch.n_ffn) == ("4", 3, 64, 100, 256)
    assert arch.runnable


@pytest.mark.parametrize(
    ("extra", "version"),
    [
        ({"blocks.0.att.ln_x.weight": (64,)}, "RWKV-5.0"),
        ({"blocks.0.att.ln_x.weight": (64,), "blocks.0.att.gate.weight": (64, 64)}, "RWKV-5.1"),
        ({"blocks.0.att.ln_x.weight": (64,), "blocks.0.att.time_faaaa": (1, 1, 64)}, "RWKV-5.0"),
    ],
)
def test_early_rwkv5_versions_are_named_and_refused(extra, version):
    shapes = shapes_of(v4_state_dict(n_layer=2, n_embd=64))
    shapes.update(extra)
    with pytest.raises(UnsupportedModelError, match=rf"{version} checkpoint .*not supported; RWKV-5.2"):
        detect_architecture("later.pth", shapes)


def test_rwkv51_with_a_decay_per_head_is_refused():
    shapes = shapes_of(v56_state_dict("5.2", n_layer=2, n_embd=128, head_size=64))
    for i in range(2):
        shapes[f"blocks.{i}.att.time_decay"] = (2,)
    with pytest.raises(UnsupportedModelError, match=r"RWKV-5\.1 checkpoint \(one decay per head\)"):
        detect_architecture("old.pth", shapes)


@pytest.mark.parametrize("transposed", [False, True])
def test_rwkv6_ranks_and_head_size_come_from_the_shapes(transposed):
    sd = v56_state_dict("6", n_layer=3, n_embd=96, head_size=32, ranks=(24, 40), n_vocab=100)
    shapes = shapes_of(sd)
    if transposed:  # as rwkv.cpp and llama.cpp store the LoRA factors
        for i in range(3):
            p = f"blocks.{i}.att."
            shapes[p + "time_maa_w1"] = shapes[p + "time_maa_w1"][::-1]
            shapes[p + "time_maa_w2"] = (5, 96, 24)
            shapes[p + "time_decay_w1"] = shapes[p + "time_decay_w1"][::-1]
            shapes[p + "time_decay_w2"] = shapes[p + "time_decay_w2"][::-1]
    arch = detect_architecture("m.pth", shapes, lora_transposed=transposed)
    assert (arch.version, arch.n_layer, arch.n_embd, arch.n_vocab, arch.n_ffn) == ("6", 3, 96, 100, 320)
    assert (arch.head_size, arch.mix_ranks, arch.n_head) == (32, (24, 40), 3) and arch.runnable


def test_rwkv52_is_recognised_with_its_head_size():
    arch = detect_architecture("m.pth", shapes_of(v56_state_dict("5.2", n_layer=2, n_embd=128, head_size=32)))
    assert (arch.version, arch.head_size, arch.n_ffn, arch.mix_ranks) == ("5.2", 32, 448, None) and arch.runnable


def test_rwkv6_mismatched_lora_shape_is_named():
    shapes = shapes_of(v56_state_dict("6", n_layer=2, n_embd=64, head_size=32, ranks=(24, 40)))
    shapes["blocks.1.att.time_decay_w2"] = (32, 64)
    expected = r"'blocks\.1\.att\.time_decay_w2' has shape \(32, 64\), expected \(40, 64\)"
    with pytest.raises(ModelFileError, match=expected):
        detect_architecture("m.pth", shapes)


@pytest.mark.parametrize("fragment", ["blocks.0.tiny_ln.weight", "blocks.0.ffnPre.key.weight"])
def test_rwkv4a_and_4b_variants_are_refused(fragment):
    shapes = shapes_of(v4_state_dict(n_layer=2, n_embd=64))
    shapes[fragment] = (64,)
    with pytest.raises(UnsupportedModelError, match="RWKV-4a/4b"):
        detect_architecture("RWKV-4a-Pile-170M.pth", shapes)


def test_missing_tensor_is_named():
    shapes = shapes_of(v4_state_dict(n_layer=2, n_embd=64))
    del shapes["blocks.1.att.output.weight"]
    with pytest.raises(ModelFileError, match=r"m\.pth: .*missing blocks\.1\.att\.output\.weight"):
        detect_architecture("m.pth", shapes)


def test_shape_mismatch_between_tensors_is_named():
    shapes = shapes_of(v4_state_dict(n_layer=2, n_embd=64))
    shapes["blocks.1.ffn.value.weight"] = (64, 128)
    expected = r"'blocks\.1\.ffn\.value\.weight' has shape \(64, 128\), expected \(64, 256\)"
    with pytest.raises(ModelFileError, match=expected):
        detect_architecture("m.pth", shapes)


def test_unknown_layout_is_refused():
    with pytest.raises(ModelFileError, match=r"not an RWKV checkpoint: no 'emb\.weight'"):
        detect_architecture("bert.bin", {"bert.embeddings.word_embeddings.weight": (30522, 768)})


def test_gap_in_block_numbers_is_refused():
    shapes = {k: v for k, v in v4_tensor_shapes(3, 64, 100).items() if not k.startswith("blocks.1.")}
    with pytest.raises(ModelFileError, match=r"missing \[1\]"):
        detect_architecture("m.pth", shapes)


def test_unexpected_extra_tensor_is_refused():
    shapes = shapes_of(v4_state_dict(n_layer=2, n_embd=64))
    shapes["blocks.1.att.mystery"] = (64,)
    with pytest.raises(ModelFileError, match=r"unexpected tensors for RWKV-4: blocks\.1\.att\.mystery"):
        detect_architecture("m.pth", shapes)
