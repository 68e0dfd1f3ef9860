"""Model files end to end through the CLI and the runtime: bad inputs, rwkv.cpp `.bin`, metadata, sources.

* every kind of bad input makes `rwkv-tui convert` (and `inspect`) exit with status 2 and one line
  naming the file and the problem, leaving nothing at (or beside) the destination;
* `runtime.load_model` runs an rwkv.cpp `.bin` directly, with the numpy oracle's logits and those of
  the GGUF `rwkv-tui convert` makes from the same file;
* converted GGUFs record the tokenizer (by vocabulary size) and `general.file_type` (llama.cpp's
  numbering, read with the `gguf` package, not our reader);
* `.safetensors` and rwkv.cpp `.bin` sources convert through the CLI to GGUFs that load and run.

Models are tiny (1 layer, 32 channels) so that the whole file runs in seconds; each distinct model
layout costs one JIT compile, so the runtime tests share shapes.
"""

from __future__ import annotations

import re
import struct
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest

import runtime
from runtime.formats.gguf_file import read_gguf
from runtime.quant.types import DType
from runtime.text.tokenizers import canonical_name
from tests.support import numpy_rwkv
from tests.support.rwkvcpp_writer import blinkdl_to_rwkvcpp, decode, write_v4_model
from tests.support.safetensors_writer import stored_values, write_safetensors
from tests.support.synthetic import v4_state_dict
from tests.support.torch_writer import contiguous_strides, tensor_pickle, write_pth, write_torch_zip
from tui.cli import main as cli
from tui.commands import output

L, C, V = 1, 32, 64
TOKENS = [3, 17, 42, 5, 63, 0, 28, 9]
ORACLE_TOLERANCE = 1e-4  # runtime vs float64 oracle on the same stored values, relative to max|logit|


@pytest.fixture(autouse=True)
def _wide_consoles(monkeypatch):
    """One message per line: rich would otherwise fold long temporary paths at 80 columns."""
    monkeypatch.setattr(output.err_console, "_width", 10_000)
    monkeypatch.setattr(output.console, "_width", 10_000)


def _sd(seed: int = 0, n_vocab: int = V) -> dict[str, np.ndarray]:
    return v4_state_dict(n_layer=L, n_embd=C, n_vocab=n_vocab, seed=seed)


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _field(reader: gguf.GGUFReader, key: str):
    field = reader.get_field(key)
    assert field is not None, f"no {key} in the GGUF"
    return field.contents()


# --- bad inputs: exit status 2, the file and the problem named, nothing written ----------------


def _torch_zip(path: Path, sd: dict[str, np.ndarray], *, drop: str | None = None,
               storage_class: dict[str, str] | None = None) -> Path:
    """A float32 torch checkpoint of `sd`; `drop` leaves that tensor's storage member out,
    `storage_class` replaces the storage global of a tensor (module.name) in the pickle."""
    entries, storages = [], {}
    for i, (name, a) in enumerate(sd.items()):
        shape = tuple(int(d) for d in a.shape)
        entries.append((name, "FloatStorage", str(i), int(a.size), 0, shape, contiguous_strides(shape)))
        if name != drop:
            storages[str(i)] = np.ascontiguousarray(a, dtype="<f4").tobytes()
    pkl = tensor_pickle(entries)
    for module_name in (storage_class or {}).values():
        module, name = module_name.rsplit(".", 1)
        pkl = pkl.replace(b"ctorch\nFloatStorage\n", f"c{module}\n{name}\n".encode(), 1)
    return write_torch_zip(path, pkl, storages)


def _truncated(path: Path, keep: int | float) -> Path:
    data = path.read_bytes()
    n = keep if isinstance(keep, int) else int(len(data) * keep)
    out = path.with_name("cut-" + path.name)
    out.write_bytes(data[:n])
    path.unlink()
    return out


def _remagic(path: Path, magic: bytes) -> Path:
    data = bytearray(path.read_bytes())
    data[: len(magic)] = magic
    path.write_bytes(bytes(data))
    return path


def _gguf_source(tmp: Path) -> Path:
    pth = write_pth(tmp / "g.pth", _sd(1), "float32")
    assert cli(["convert", str(pth), str(tmp / "m.gguf"), "--type", "q8_0"]) == 0
    pth.unlink()
    return tmp / "m.gguf"


def _pth_without_data_pkl(tmp: Path) -> Path:
    src = write_pth(tmp / "full.pth", _sd(1), "float32")
    path = tmp / "m.pth"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            if not info.filename.endswith("/data.pkl"):
                zout.writestr(info.filename, zin.read(info))
    src.unlink()
    return path


def _os_system_pickle(tmp: Path) -> Path:
    cmd = f"touch {tmp / 'pwned'}".encode()
    pkl = b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(cmd)) + cmd + b"\x85R."
    return write_torch_zip(tmp / "m.pth", pkl, {"0": bytes(16)})


def _shape_mismatch_pth(tmp: Path) -> Path:
    sd = _sd(1)
    sd["blocks.0.ffn.value.weight"] = np.zeros((C, 2 * C), np.float32)  # ffn.key says 4*C
    return write_pth(tmp / "m.pth", sd, "float32")


def _shape_mismatch_bin(tmp: Path) -> Path:
    sd = _sd(1)
    sd["blocks.0.att.key.weight"] = np.zeros((C, 2 * C), np.float32)
    return write_v4_model(tmp / "m.bin", sd, DType.F16)


# name -> (build the bad file in a folder, pattern the error must contain)
BAD_INPUTS = {
    "truncated-pth": (lambda t: _truncated(write_pth(t / "m.pth", _sd(1), "float32"), 0.5),
                      r"damaged or truncated zip"),
    "truncated-bin-header": (lambda t: _truncated(write_v4_model(t / "m.bin", _sd(1), DType.F16), 10),
                             r"file is truncated: 10 bytes, shorter than the rwkv\.cpp header"),
    "truncated-bin-data": (lambda t: _truncated(write_v4_model(t / "m.bin", _sd(1), DType.Q8_0), 0.99),
                           r"file is truncated: tensor 'head\.weight' needs bytes"),
    "truncated-gguf": (lambda t: _truncated(_gguf_source(t), 0.5), r"file is truncated: tensor '"),
    "truncated-safetensors": (
        lambda t: _truncated(write_safetensors(t / "m.safetensors", _sd(1)), 0.7), r"file is truncated: tensor '"),
    "wrong-magic-bin": (lambda t: _remagic(write_v4_model(t / "m.bin", _sd(1), DType.F16), b"fmgh"),
                        r"unknown file format"),
    "wrong-magic-gguf": (lambda t: _remagic(_gguf_source(t), b"GGUG"), r"unknown file format"),
    "wrong-magic-pth": (lambda t: _remagic(write_pth(t / "m.pth", _sd(1), "float32"), b"PX"),
                        r"unknown file format"),
    "zip-without-data.pkl": (_pth_without_data_pkl, r"no <archive>/data\.pkl"),
    "zip-missing-storage": (lambda t: _torch_zip(t / "m.pth", _sd(1), drop="blocks.0.att.value.weight"),
                            r"tensor 'blocks\.0\.att\.value\.weight' needs storage member 'archive/data/\d+'"),
    "shape-mismatch-pth": (_shape_mismatch_pth,
                           r"tensor 'blocks\.0\.ffn\.value\.weight' has shape \(32, 64\), expected \(32, 128\)"),
    "shape-mismatch-bin": (_shape_mismatch_bin,
                           r"tensor 'blocks\.0\.att\.key\.weight' has shape \(32, 64\), expected \(32, 32\)"),
    "forbidden-global-os.system": (_os_system_pickle, r"refusing to load: the pickle asks for 'os\.system'"),
    "forbidden-global-in-a-tensor": (
        lambda t: _torch_zip(t / "m.pth", _sd(1), storage_class={"emb.weight": "os.system"}),
        r"refusing to load: the pickle asks for 'os\.system'"),
}


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def _assert_refused(rc: int, err: str, src: Path, pattern: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err  # one line, last (after any progress bar)
    assert f"error: {src}: " in errors[0]  # the whole path of the file, then the problem
    assert re.search(pattern, errors[0]), errors[0]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_convert_refuses_bad_input_with_status_2(tmp_path, out_dir, capsys, case):
    build, pattern = BAD_INPUTS[case]
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    src = build(src_dir)
    dst = out_dir / "m.gguf"
    rc, _, err = _run(capsys, "convert", str(src), str(dst), "--type", "q8_0")
    _assert_refused(rc, err, src, pattern)
    assert list(out_dir.iterdir()) == []  # no output, no temporary file beside it
    assert not (src_dir / "pwned").exists()  # nothing from a pickle was executed
    assert [p.name for p in src_dir.iterdir() if p != src] == []  # and nothing written beside the source


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_inspect_refuses_bad_input_with_status_2(tmp_path, capsys, case):
    build, pattern = BAD_INPUTS[case]
    src = build(tmp_path)
    rc, out, err = _run(capsys, "inspect", str(src))
    _assert_refused(rc, err, src, pattern)
    assert "tensors" not in out  # nothing of the file was listed
    assert not (tmp_path / "pwned").exists()


def test_refused_convert_keeps_an_existing_destination(tmp_path, capsys):
    src = _shape_mismatch_pth(tmp_path)
    dst = tmp_path / "m.gguf"
    dst.write_bytes(b"an older conversion")
    rc, _, err = _run(capsys, "convert", str(src), str(dst), "--type", "q8_0")
    assert rc == 2 and str(src) in err
    assert dst.read_bytes() == b"an older conversion"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "m.pth"]


# (source kind, stored dtype, tensor, index, value, row the message names)
_NO_NUMPY_WARNING = pytest.mark.filterwarnings("error::RuntimeWarning")  # the error says it, numpy does not
NONFINITE = [pytest.param(*case, id=f"{case[0]}-{case[2]}", marks=marks) for *case, marks in [
    ("pth", "float32", "blocks.0.att.key.weight", (3, 7), np.nan, 3, ()),  # a matrix: native quantizer
    ("pth", "bfloat16", "blocks.0.ffn.value.weight", (30, 100), np.inf, 30, ()),
    ("pth", "float32", "head.weight", (60, 0), -np.inf, 60, ()),
    # ln0 folded in, on the numpy path
    ("pth", "float32", "emb.weight", (11, 4), np.inf, 11, _NO_NUMPY_WARNING),
    ("pth", "float32", "blocks.0.ln1.bias", (5,), np.nan, 0, ()),  # a vector
    ("pth", "float32", "blocks.0.att.time_decay", (2,), np.inf, 0, ()),  # -exp(inf) is -inf
    ("pth", "float32", "blocks.0.att.time_mix_k", (0, 0, 9), np.nan, 0, ()),  # (1, 1, C), squeezed
    ("safetensors", "F16", "blocks.0.att.output.weight", (8, 1), np.inf, 8, ()),
    ("bin", "F16", "blocks.0.ffn.receptance.weight", (17, 2), np.nan, 17, ()),
]]


@pytest.mark.parametrize(("kind", "dtype", "name", "index", "value", "row"), NONFINITE)
def test_convert_refuses_nan_and_inf_weights(tmp_path, out_dir, capsys, kind, dtype, name, index, value, row):
    sd = _sd(2)
    sd[name][index] = value
    if kind == "pth":
        src = write_pth(tmp_path / "m.pth", sd, dtype)
    elif kind == "safetensors":
        src = write_safetensors(tmp_path / "m.safetensors", sd, dtype)
    else:
        src = write_v4_model(tmp_path / "m.bin", sd, DType.F16)
    rc, _, err = _run(capsys, "convert", str(src), str(out_dir / "m.gguf"), "--type", "q8_0")
    pattern = rf"tensor '{name}' contains NaN or Inf values \(first in row {row}\)"
    _assert_refused(rc, err, src, pattern)
    assert list(out_dir.iterdir()) == []


# --- the runtime runs rwkv.cpp .bin files directly ----------------------------------------------


@pytest.fixture(scope="module")
def sd() -> dict[str, np.ndarray]:
    return _sd(11)


def _bin_oracle(sd: dict[str, np.ndarray], data_type: DType) -> np.ndarray:
    """The oracle's logits on exactly the values an rwkv.cpp file of `data_type` stores."""
    stored = {name: decode(a, t) for name, (a, t) in blinkdl_to_rwkvcpp(sd, data_type).items()}
    for name in stored:
        if name.endswith(".time_decay"):
            stored[name] = sd[name]  # the file holds -exp(raw); the oracle applies -exp itself
    return numpy_rwkv.forward(stored, TOKENS)[0]


@pytest.fixture(scope="module")
def bin_logits(sd, tmp_path_factory) -> dict[DType, tuple[Path, np.ndarray]]:
    """.bin files of each type and the runtime's logits on them (one compile each)."""
    folder = tmp_path_factory.mktemp("bin")
    out = {}
    for data_type in (DType.F16, DType.Q5_1):
        path = write_v4_model(folder / f"m-{data_type.name}.bin", sd, data_type)
        with runtime.load_model(path, threads=2) as model:
            assert model.metadata["rwkvcpp.data_type"] == data_type.name
            assert model.file_type == data_type.name
            assert (model.n_layer, model.n_embd, model.n_vocab) == (L, C, V)
            logits, _ = model.forward(TOKENS)
        out[data_type] = (path, logits)
    return out


@pytest.mark.parametrize("data_type", [DType.F16, DType.Q5_1], ids=["F16", "Q5_1"])
def test_load_model_runs_an_rwkvcpp_bin_like_the_oracle(sd, bin_logits, data_type):
    _, logits = bin_logits[data_type]
    assert logits.shape == (V,) and np.isfinite(logits).all()
    assert _rel(logits, _bin_oracle(sd, data_type)) <= ORACLE_TOLERANCE
    if data_type.is_quantized:  # the oracle on the unquantized weights is clearly further away
        assert _rel(logits, numpy_rwkv.forward(sd, TOKENS)[0]) > 10 * ORACLE_TOLERANCE


def _gguf_oracle(sd: dict[str, np.ndarray], path: Path) -> np.ndarray:
    """The oracle on a converted file's stored matrices and embedding (ln0 folded) and the
    source's raw vectors: exact if convert applied every transform once."""
    g = read_gguf(path)
    weights = dict(sd)
    for name, t in g.tensors.items():
        if len(t.shape) == 2 and name != "emb.weight":
            weights[name] = t.numpy()
    return numpy_rwkv.forward(numpy_rwkv.prepare(weights, emb_ln0=g.tensors["emb.weight"].numpy()), TOKENS)[0]


def _check_folded_embedding(sd: dict[str, np.ndarray], path: Path, emb_source: np.ndarray) -> None:
    """The converted embedding is LN0(source embedding), stored F16."""
    emb = read_gguf(path).tensors["emb.weight"]
    assert emb.dtype is DType.F16
    want = numpy_rwkv._ln(emb_source.astype(np.float64), sd["blocks.0.ln0.weight"].astype(np.float64),
                          sd["blocks.0.ln0.bias"].astype(np.float64))
    np.testing.assert_allclose(emb.numpy(), want, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("data_type", [DType.F16, DType.Q5_1], ids=["F16", "Q5_1"])
def test_bin_and_its_conversion_give_the_same_logits(sd, bin_logits, tmp_path, capsys, data_type):
    """`rwkv-tui convert x.bin x.gguf --type T` (head kept F16 as in the .bin): same model, same logits."""
    src, bin_result = bin_logits[data_type]
    dst = tmp_path / "m.gguf"
    rc, out, err = _run(capsys, "convert", str(src), str(dst), "--type", data_type.name.lower(),
                        "--head-type", "f16")
    assert rc == 0, err
    assert str(dst) in out
    g = read_gguf(dst)
    assert g.metadata["rwkv_tui.source.format"] == "rwkvcpp"
    assert g.tensors["blocks.0.att.key.weight"].dtype is data_type
    assert g.tensors["head.weight"].dtype is DType.F16
    # re-quantizing dequantized blocks gives back (almost exactly) the same values
    stored = blinkdl_to_rwkvcpp(sd, data_type)
    for name in ("blocks.0.att.key.weight", "blocks.0.ffn.value.weight", "head.weight"):
        a, t = stored[name]
        np.testing.assert_allclose(g.tensors[name].numpy(), decode(a, t), rtol=0, atol=1e-3, err_msg=name)
    _check_folded_embedding(sd, dst, decode(sd["emb.weight"], DType.F16))
    with runtime.load_model(dst, threads=2) as model:
        gguf_result, _ = model.forward(TOKENS)
    # only the embedding differs: the .bin applies ln0 at run time, the GGUF stores LN0(emb) in F16
    assert _rel(gguf_result, bin_result) <= 2e-3
    assert _rel(gguf_result, _gguf_oracle(sd, dst)) <= ORACLE_TOLERANCE


# --- converted metadata: tokenizer and file type ------------------------------------------------


@pytest.mark.parametrize(("n_vocab", "kind", "target", "tokenizer"), [
    (50277, "pth", "q8_0", "gpt-neox-20b"),
    (65536, "bin", "q5_1", "rwkv-world"),
    (50277, "safetensors", "f16", "gpt-neox-20b"),
])
def test_tokenizer_is_recorded_by_vocabulary(tmp_path, capsys, n_vocab, kind, target, tokenizer):
    sd = _sd(4, n_vocab=n_vocab)
    if kind == "pth":
        src = write_pth(tmp_path / "m.pth", sd, "bfloat16")
    elif kind == "bin":
        src = write_v4_model(tmp_path / "m.bin", sd, DType.F16)
    else:
        src = write_safetensors(tmp_path / "m.safetensors", sd, "BF16")
    dst = tmp_path / "m.gguf"
    rc, _, err = _run(capsys, "convert", str(src), str(dst), "--type", target)
    assert rc == 0, err
    reader = gguf.GGUFReader(dst)
    assert _field(reader, "tokenizer.ggml.model") == tokenizer
    assert canonical_name(tokenizer) == tokenizer  # a name the runtime's tokenizer loader knows
    assert _field(reader, "rwkv4.vocab_size") == n_vocab
    ftype = gguf.LlamaFileType[f"MOSTLY_{target.upper()}"]
    assert _field(reader, "general.file_type") == ftype
    assert read_gguf(dst).metadata["tokenizer.ggml.model"] == tokenizer  # our reader agrees


def test_other_vocabularies_record_no_tokenizer(tmp_path, capsys):
    src = write_pth(tmp_path / "m.pth", _sd(4, n_vocab=50304), "bfloat16")  # 20B padded: not 50277
    assert _run(capsys, "convert", str(src), str(tmp_path / "m.gguf"), "--type", "q8_0")[0] == 0
    assert _field(gguf.GGUFReader(tmp_path / "m.gguf"), "tokenizer.ggml.model") == "none"


# llama.cpp's LLAMA_FTYPE numbering, from the gguf package (ALL_F32 is "all", the rest "mostly")
FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q5_1": gguf.LlamaFileType.MOSTLY_Q5_1,
    "q5_0": gguf.LlamaFileType.MOSTLY_Q5_0, "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}


@pytest.fixture(scope="module")
def small_pth(tmp_path_factory) -> Path:
    return write_pth(tmp_path_factory.mktemp("src") / "small.pth", _sd(5), "bfloat16")


@pytest.mark.parametrize("target", FILE_TYPES)
def test_file_type_matches_the_requested_type(small_pth, tmp_path, capsys, target):
    dst = tmp_path / "m.gguf"
    rc, _, err = _run(capsys, "convert", str(small_pth), str(dst), "--type", target)
    assert rc == 0, err
    reader = gguf.GGUFReader(dst)
    assert _field(reader, "general.file_type") == FILE_TYPES[target].value
    assert _field(reader, "general.architecture") == "rwkv4"
    types = {t.name: t.tensor_type for t in reader.tensors}
    want = gguf.GGMLQuantizationType[target.upper()]
    layer_matrices = [n for n in types if n.startswith("blocks.") and n.endswith(".weight") and ".ln" not in n]
    assert len(layer_matrices) == 7 * L
    assert all(types[n] == want for n in layer_matrices), types
    assert types["ln_out.weight"] == gguf.GGMLQuantizationType.F32


# --- .safetensors and rwkv.cpp .bin sources through the CLI -------------------------------------


def test_convert_a_safetensors_source_to_a_runnable_gguf(sd, tmp_path, capsys):
    src = write_safetensors(tmp_path / "m.safetensors", sd, "BF16", metadata={"format": "pt"})
    dst = tmp_path / "m.gguf"
    rc, out, err = _run(capsys, "convert", str(src), str(dst), "--type", "q5_1", "--head-type", "f16")
    assert rc == 0, err
    assert "layers Q5_1, head F16" in out
    g = read_gguf(dst)
    assert g.metadata["rwkv_tui.source.format"] == "safetensors"
    assert g.metadata["rwkv_tui.source.file_name"] == "m.safetensors"
    bf16 = {k: stored_values(v, "BF16") for k, v in sd.items()}
    _check_folded_embedding(bf16, dst, bf16["emb.weight"])
    with runtime.load_model(dst, threads=2) as model:
        assert model.file_type == "Q5_1"
        logits, _ = model.forward(TOKENS)
    assert _rel(logits, _gguf_oracle(bf16, dst)) <= ORACLE_TOLERANCE
    # and still the source's model, up to bf16 rounding and Q5_1 quantization
    assert _rel(logits, numpy_rwkv.forward(sd, TOKENS)[0]) <= 0.05


def test_convert_and_inspect_an_rwkvcpp_source(sd, bin_logits, tmp_path, capsys):
    src, bin_result = bin_logits[DType.Q5_1]
    rc, out, err = _run(capsys, "inspect", str(src))
    assert rc == 0, err
    for needle in ("rwkvcpp", "RWKV-4", "1 × 32", "Q5_1", "blocks.0.ln0.weight"):
        assert needle in out, needle
    dst = tmp_path / "m.gguf"
    rc, out, err = _run(capsys, "convert", str(src), str(dst), "--type", "q8_0")  # default head: Q8_0
    assert rc == 0, err
    assert "layers Q8_0, head Q8_0" in out
    rc, out, _ = _run(capsys, "inspect", str(dst))
    assert rc == 0 and "gguf" in out and "ln0_folded_into_emb" in out
    assert "blocks.0.ln0.weight" not in out
    with runtime.load_model(dst, threads=2) as model:
        assert model.file_type == "Q8_0"
        assert model.tokenizer_name == "none"
        logits, _ = model.forward(TOKENS)
    assert _rel(logits, _gguf_oracle(sd, dst)) <= ORACLE_TOLERANCE
    assert _rel(logits, bin_result) <= 0.05  # Q5_1 re-quantized to Q8_0: close, not equal
