"""The Hugging Face transformers layout: renaming, model folders, shard indexes, open_checkpoint."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from runtime.errors import ModelFileError, UnsupportedModelError
from runtime.formats.checkpoint import open_checkpoint
from runtime.formats.hf import find_hf_shards, hf_name_to_blinkdl, hf_to_blinkdl, is_hf_layout
from runtime.formats.safetensors_file import read_safetensors
from tests.support.safetensors_writer import stored_values, write_safetensors
from tests.support.synthetic import v4_state_dict
from tests.support.torch_writer import write_pth

L, C, V = 2, 32, 48


def to_hf_name(name: str) -> str:
    """transformers' convert_rwkv_checkpoint_to_hf.py renaming, re-stated from its documented rules."""
    if name.startswith("emb."):
        name = "embeddings." + name[4:]
    name = name.replace("blocks.0.ln0", "blocks.0.pre_ln")
    name = re.sub(r"blocks\.(\d+)\.att\.", r"blocks.\1.attention.", name)
    name = re.sub(r"blocks\.(\d+)\.ffn\.", r"blocks.\1.feed_forward.", name)
    for short, long in (("k", "key"), ("v", "value"), ("r", "receptance")):
        if name.endswith(f".time_mix_{short}"):
            name = name[: -len(short)] + long
    return name if name == "head.weight" else "rwkv." + name


@pytest.fixture(scope="module")
def sd() -> dict[str, np.ndarray]:
    return v4_state_dict(n_layer=L, n_embd=C, n_vocab=V, seed=7)


@pytest.fixture(scope="module")
def hf_sd(sd) -> dict[str, np.ndarray]:
    return {to_hf_name(k): v for k, v in sd.items()}


def test_spot_check_of_the_hf_names(hf_sd):
    for name in ("rwkv.embeddings.weight", "rwkv.blocks.0.pre_ln.bias", "rwkv.blocks.1.ln2.weight",
                 "rwkv.blocks.1.attention.time_mix_receptance", "rwkv.blocks.0.attention.output.weight",
                 "rwkv.blocks.1.feed_forward.time_mix_key", "rwkv.ln_out.bias", "head.weight"):
        assert name in hf_sd


def test_every_hf_name_maps_back_to_blinkdl(sd):
    for name in sd:
        assert hf_name_to_blinkdl(to_hf_name(name)) == name


@pytest.mark.parametrize("name", [
    "rwkv.blocks.1.pre_ln.weight",  # pre_ln exists only in block 0
    "rwkv.blocks.0.attention.time_mix_k",  # BlinkDL leaf under an HF prefix
    "rwkv.blocks.0.feed_forward.output.weight",
    "rwkv.blocks.01.ln1.weight",
    "rwkv.blocks.0.ln3.weight",
    "rwkv.head.weight",
    "lm_head.weight",
    "emb.weight",
])
def test_names_outside_the_layout(name):
    assert hf_name_to_blinkdl(name) is None


def test_is_hf_layout(tmp_path, sd, hf_sd):
    assert is_hf_layout(read_safetensors(write_safetensors(tmp_path / "h.safetensors", hf_sd)))
    assert not is_hf_layout(read_safetensors(write_safetensors(tmp_path / "b.safetensors", sd)))


def test_hf_to_blinkdl_renames_lazily(tmp_path, sd, hf_sd):
    hf = read_safetensors(write_safetensors(tmp_path / "h.safetensors", hf_sd))
    out = hf_to_blinkdl(hf)
    assert sorted(out) == sorted(sd)
    for name, t in out.items():
        src = hf[to_hf_name(name)]
        assert t.name == name
        assert (t.offset, t.shape, t.dtype, t.file) == (src.offset, src.shape, src.dtype, src.file)
    assert out["blocks.1.att.time_mix_v"].shape == (1, 1, C)  # transformers keeps BlinkDL's shapes


def test_hf_to_blinkdl_names_unknown_tensors(tmp_path, hf_sd):
    extra = dict(hf_sd, **{"rwkv.blocks.0.attention.foo": np.ones(4, np.float32)})
    hf = read_safetensors(write_safetensors(tmp_path / "h.safetensors", extra))
    with pytest.raises(ModelFileError, match=r"'rwkv\.blocks\.0\.attention\.foo'"):
        hf_to_blinkdl(hf)


def _check(ck, sd, type_name="F32"):
    assert (ck.arch.version, ck.arch.n_layer, ck.arch.n_embd, ck.arch.n_vocab) == ("4", L, C, V)
    assert ck.transforms == frozenset()
    assert sorted(ck.tensors) == sorted(sd)
    for name, a in sd.items():
        np.testing.assert_array_equal(ck.tensors[name].numpy(), stored_values(a, type_name), err_msg=name)


def test_open_checkpoint_on_an_hf_safetensors_file(tmp_path, sd, hf_sd):
    ck = open_checkpoint(write_safetensors(tmp_path / "model.safetensors", hf_sd, "BF16"))
    assert ck.source_format == "hf-safetensors"
    _check(ck, sd, "BF16")


def test_open_checkpoint_on_a_folder_with_one_file(tmp_path, sd, hf_sd):
    write_safetensors(tmp_path / "model.safetensors", hf_sd, "F16")
    (tmp_path / "config.json").write_text("{}")
    ck = open_checkpoint(tmp_path)
    assert ck.source_format == "hf-safetensors"
    _check(ck, sd, "F16")


def test_open_checkpoint_on_a_folder_with_pytorch_model_bin(tmp_path, sd, hf_sd):
    write_pth(tmp_path / "pytorch_model.bin", hf_sd, "float32")
    ck = open_checkpoint(tmp_path)
    assert ck.source_format == "hf-pth"
    _check(ck, sd)


def _write_shards(folder, hf_sd, stem="model", ext="safetensors", n=3):
    names = sorted(hf_sd)
    weight_map = {}
    for i in range(n):
        shard = f"{stem}-{i + 1:05d}-of-{n:05d}.{ext}"
        part = {k: hf_sd[k] for k in names[i::n]}
        if ext == "safetensors":
            write_safetensors(folder / shard, part)
        else:
            write_pth(folder / shard, part, "float32")
        weight_map.update(dict.fromkeys(part, shard))
    index = folder / f"{stem}.{ext}.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


def test_open_checkpoint_on_sharded_safetensors(tmp_path, sd, hf_sd):
    index = _write_shards(tmp_path, hf_sd)
    expected = [tmp_path / f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert find_hf_shards(tmp_path) == expected
    assert find_hf_shards(index) == expected
    ck = open_checkpoint(tmp_path)
    assert ck.source_format == "hf-safetensors"
    _check(ck, sd)


def test_open_checkpoint_on_an_index_file(tmp_path, sd, hf_sd):
    ck = open_checkpoint(_write_shards(tmp_path, hf_sd))
    assert ck.source_format == "hf-safetensors"
    _check(ck, sd)


def test_open_checkpoint_on_sharded_pytorch_files(tmp_path, sd, hf_sd):
    _write_shards(tmp_path, hf_sd, stem="pytorch_model", ext="bin", n=2)
    ck = open_checkpoint(tmp_path)
    assert ck.source_format == "hf-pth"
    _check(ck, sd)


def test_safetensors_preferred_over_pytorch_files(tmp_path, hf_sd):
    write_pth(tmp_path / "pytorch_model.bin", hf_sd, "float32")
    _write_shards(tmp_path, hf_sd, stem="pytorch_model", ext="bin", n=2)
    assert find_hf_shards(tmp_path) == [tmp_path / "pytorch_model.bin"]
    _write_shards(tmp_path, hf_sd, n=2)
    assert [p.suffix for p in find_hf_shards(tmp_path)] == [".safetensors"] * 2
    write_safetensors(tmp_path / "model.safetensors", hf_sd)
    assert find_hf_shards(tmp_path) == [tmp_path / "model.safetensors"]


def test_missing_shard(tmp_path, hf_sd):
    _write_shards(tmp_path, hf_sd)
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(ModelFileError, match=r"shard 'model-00002-of-00003\.safetensors' .* is missing"):
        open_checkpoint(tmp_path)


@pytest.mark.parametrize(("content", "words"), [
    ("{oops", "not valid JSON"),
    ('{"metadata": {}}', "no 'weight_map'"),
    ('{"weight_map": {}}', "no 'weight_map'"),
    ('{"weight_map": {"head.weight": "../model.safetensors"}}', "not a file name"),
    ('{"weight_map": {"head.weight": 3}}', "not a file name"),
])
def test_bad_index(tmp_path, content, words):
    (tmp_path / "model.safetensors.index.json").write_text(content)
    with pytest.raises(ModelFileError, match=words):
        find_hf_shards(tmp_path)


def test_an_index_that_would_parse_into_gigabytes_is_refused_unparsed(tmp_path):
    """9 MB of "[]," would become 170 MB of Python lists (64 MB of it, 1.3 GB)."""
    (tmp_path / "model.safetensors.index.json").write_bytes(b'{"weight_map": {}, "x": [' + b"[]," * (3 << 20) + b"[]]}")
    with pytest.raises(ModelFileError, match="shard index is larger than 8 MB"):
        find_hf_shards(tmp_path)


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelFileError, match="no model weights"):
        open_checkpoint(tmp_path)


def test_later_versions_in_hf_layout_are_reported_by_name(tmp_path, hf_sd):
    v5 = dict(hf_sd, **{f"rwkv.blocks.{i}.attention.ln_x.weight": np.ones(C, np.float32) for i in range(L)})
    with pytest.raises(UnsupportedModelError, match="RWKV-5"):
        open_checkpoint(write_safetensors(tmp_path / "model.safetensors", v5))
