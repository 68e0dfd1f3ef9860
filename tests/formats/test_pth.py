"""The torch-free `.pth` reader: real torch.save fixtures, our writer, laziness, ZIP64, bad and hostile files.

Real torch is never needed: its files are committed in tests/fixtures/torch (tools/make_torch_fixture.py).
"""

from __future__ import annotations

import pickle
import struct
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import ModelFileError, UnsafePickleError
from runtime.formats import safe_unpickle
from runtime.formats.pth import read_pth
from runtime.quant.codec import bf16_to_float32
from runtime.quant.types import DType
from tests.support.reference import read_pth_arrays
from tests.support.synthetic import v4_state_dict
from tests.support.torch_writer import Zeros, tensor_pickle, to_storage_bytes, write_pth, write_torch_zip

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "torch"
TAGS = {"bf16": ("bfloat16", DType.BF16), "fp16": ("float16", DType.F16), "fp32": ("float32", DType.F32)}
TINY_SHAPE = {"n_layer": 2, "n_embd": 16, "n_vocab": 64, "seed": 0}  # as tools/make_torch_fixture.py


def expected(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


def small_state_dict() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {"a.weight": rng.standard_normal((5, 8)).astype(np.float32),
            "b": rng.standard_normal(8).astype(np.float32),
            "mix": rng.uniform(0, 1, (1, 1, 8)).astype(np.float32)}


def one_tensor_zip(path: Path, storage_bytes: bytes, **entry) -> Path:
    """A torch zip with one float32 tensor 'w'; `entry` overrides the pickle's view of it."""
    e = {"storage": "FloatStorage", "key": "0", "numel": 4, "offset": 0, "size": (4,), "stride": (1,)} | entry
    pkl = tensor_pickle([("w", e["storage"], e["key"], e["numel"], e["offset"], e["size"], e["stride"])])
    return write_torch_zip(path, pkl, {"0": storage_bytes})


def pickle_zip(path: Path, data_pkl: bytes) -> Path:
    return write_torch_zip(path, data_pkl, {"0": bytes(16)})


# --- files written by real torch.save ------------------------------------------------------------


@pytest.mark.parametrize("tag", TAGS)
def test_real_torch_fixture_reads_exactly(tag):
    tensors = read_pth(FIXTURES / f"tiny_{tag}.pth")
    want = expected(f"tiny_{tag}")
    assert list(tensors) == list(want)  # names and order as saved
    for name, values in want.items():
        t = tensors[name]
        assert t.dtype is TAGS[tag][1]
        assert t.shape == values.shape
        np.testing.assert_array_equal(t.numpy(), values, err_msg=name)
    assert tensors["blocks.1.att.time_mix_k"].shape == (1, 1, 16)
    assert tensors["emb.weight"].shape == (64, 16)
    assert len({id(t.file) for t in tensors.values()}) == 1  # one shared FileHandle
    assert all(t.offset % 64 == 0 for t in tensors.values())  # torch aligns storages


@pytest.mark.parametrize("tag", ["bf16", "fp16"])
def test_writer_rounds_like_torch(tag):
    """Our float32 → bf16/fp16 conversion gives torch's values bit for bit."""
    dtype = TAGS[tag][0]
    want = expected(f"tiny_{tag}")
    for name, values in v4_state_dict(**TINY_SHAPE).items():
        raw = to_storage_bytes(values, dtype)
        ours = bf16_to_float32(np.frombuffer(raw, "<u2")) if tag == "bf16" else np.frombuffer(raw, "<f2")
        np.testing.assert_array_equal(ours.astype(np.float32).reshape(values.shape), want[name], err_msg=name)


def test_views_sharing_a_storage_with_offsets():
    tensors = read_pth(FIXTURES / "views.pth")
    want = expected("views")
    for name, values in want.items():
        assert tensors[name].shape == values.shape
        np.testing.assert_array_equal(tensors[name].numpy(), values, err_msg=name)
    base = tensors["base"].offset
    assert tensors["rows_1_3"].offset == base + 8 * 4
    assert tensors["row_3"].offset == base + 24 * 4
    assert tensors["singleton"].offset == base + 16 * 4
    assert tensors["half_tail"].dtype is DType.BF16
    assert tensors["half_tail"].offset == tensors["half"].offset + 32 * 2


def test_non_contiguous_view_is_refused():
    with pytest.raises(ModelFileError, match=r"tensor 'transposed' is a non-contiguous view.*\(1, 8\)"):
        read_pth(FIXTURES / "views_noncontig.pth")


@pytest.mark.parametrize(("name", "pattern"), [
    ("double", r"tensor 'weight' is stored as DoubleStorage \(float64\)"),
    ("uint16", r"tensor 'counts' is stored as UntypedStorage \(uint16\)"),
])
def test_unsupported_element_types_are_refused_by_name(name, pattern):
    with pytest.raises(ModelFileError, match=pattern) as err:
        read_pth(FIXTURES / f"{name}.pth")
    assert not isinstance(err.value, UnsafePickleError)


def test_open_checkpoint_on_real_torch_file():
    from runtime.formats.checkpoint import open_checkpoint

    ckpt = open_checkpoint(FIXTURES / "tiny_bf16.pth")
    assert ckpt.source_format == "pth"
    assert (ckpt.arch.version, ckpt.arch.n_layer, ckpt.arch.n_embd, ckpt.arch.n_vocab) == ("4", 2, 16, 64)
    np.testing.assert_array_equal(ckpt.tensors["head.weight"].numpy(), expected("tiny_bf16")["head.weight"])


# --- files from tests/support/torch_writer ------------------------------------------------------


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("zip64", [False, True])
def test_writer_round_trip(tmp_path, dtype, zip64):
    sd = v4_state_dict(n_layer=2, n_embd=32, n_vocab=64, seed=5)
    path = write_pth(tmp_path / "m.pth", sd, dtype, zip64=zip64)
    tensors = read_pth(path)
    independent = read_pth_arrays(path)  # the reference fixtures' own reader agrees
    for name, values in sd.items():
        raw = np.frombuffer(to_storage_bytes(values, dtype), "<u2" if dtype == "bfloat16" else None)
        if dtype == "bfloat16":
            want = bf16_to_float32(raw).reshape(values.shape)
        else:
            want = values.astype(dtype).astype(np.float32)
        np.testing.assert_array_equal(tensors[name].numpy(), want, err_msg=name)
        np.testing.assert_array_equal(independent[name], want, err_msg=name)


def test_writer_makes_a_valid_aligned_stored_zip(tmp_path):
    path = write_pth(tmp_path / "m.pth", small_state_dict(), "float32")
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None  # every CRC right
        infos = zf.infolist()
        assert [i.filename for i in infos][:4] == ["m/data.pkl", "m/.format_version", "m/.storage_alignment",
                                                   "m/byteorder"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        assert zf.read("m/version") == b"3\n"
        np.testing.assert_array_equal(np.frombuffer(zf.read("m/data/1"), "<f4"), small_state_dict()["b"])
    for t in read_pth(path).values():
        assert t.offset % 64 == 0


def test_zip64_file_over_4_gib(tmp_path):
    """A sparse 4.4 GB checkpoint: sizes and offsets past 4 GiB are read from the ZIP64 records."""
    tail = np.arange(8, dtype=np.float32)
    path = write_pth(tmp_path / "big.pth", {"big": Zeros((2_200_000, 1000)), "tail": tail}, "bfloat16")
    assert path.stat().st_size > 1 << 32
    tensors = read_pth(path)
    assert tensors["big"].nbytes == 4_400_000_000
    assert tensors["tail"].offset > 1 << 32
    np.testing.assert_array_equal(tensors["tail"].numpy(), tail)
    assert not tensors["big"].read_rows(0, 1).any()


def test_reading_is_lazy(tmp_path):
    big = np.random.default_rng(0).standard_normal((4096, 4096)).astype(np.float32)  # 64 MB
    path = write_pth(tmp_path / "lazy.pth", {"small": np.ones(4, np.float32), "big": big}, "float32")
    tracemalloc.start()
    try:
        tensors = read_pth(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20, f"read_pth allocated {peak} bytes"
    assert tensors["big"].nbytes == 64 << 20
    np.testing.assert_array_equal(tensors["big"].read_rows(4000, 4002), big[4000:4002])


# --- damaged and malformed files ---------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.5, -22])
def test_truncated_file(tmp_path, keep):
    path = write_pth(tmp_path / "m.pth", small_state_dict())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] if isinstance(keep, float) else data[:keep])
    with pytest.raises(ModelFileError, match="damaged or truncated zip") as err:
        read_pth(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("shift", [64, 4000])
def test_zip64_end_record_pointing_past_the_directory(tmp_path, shift):
    """zipfile shifts every member offset by the distance between where it found the directory and
    where the ZIP64 end record says it is: a record a few KB too far gave negative member offsets
    and a bare OSError (EINVAL) from pread."""
    path = write_pth(tmp_path / "m.pth", small_state_dict(), zip64=True)
    data = bytearray(path.read_bytes())
    at = data.rfind(b"PK\x06\x06")
    (cd_offset,) = struct.unpack_from("<Q", data, at + 48)
    struct.pack_into("<Q", data, at + 48, cd_offset + shift)
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=rf"damaged zip directory: member 'm/data.pkl' starts at byte -{shift},"):
        read_pth(path)


def test_not_a_zip(tmp_path):
    path = tmp_path / "m.pth"
    path.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(ModelFileError, match="not a PyTorch zip checkpoint"):
        read_pth(path)


def test_legacy_non_zip_torch_file(tmp_path):
    path = tmp_path / "old.pth"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(ModelFileError, match="legacy"):
        read_pth(path)


def test_empty_file(tmp_path):
    path = tmp_path / "m.pth"
    path.write_bytes(b"")
    with pytest.raises(ModelFileError, match="not a PyTorch zip checkpoint"):
        read_pth(path)


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "m.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data/0", bytes(16))
        zf.writestr("archive/version", "3\n")
    with pytest.raises(ModelFileError, match=r"no <archive>/data.pkl"):
        read_pth(path)


def test_missing_storage_member(tmp_path):
    pkl = tensor_pickle([("w", "FloatStorage", "7", 4, 0, (4,), (1,))])
    path = write_torch_zip(tmp_path / "m.pth", pkl, {"0": bytes(16)})
    with pytest.raises(ModelFileError, match=r"tensor 'w' needs storage member 'archive/data/7'"):
        read_pth(path)


def test_compressed_member(tmp_path):
    src = write_pth(tmp_path / "src.pth", small_state_dict(), "float32")
    path = tmp_path / "m.pth"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            method = zipfile.ZIP_DEFLATED if info.filename == "src/data/0" else zipfile.ZIP_STORED
            zout.writestr(info.filename, zin.read(info), compress_type=method)
    with pytest.raises(ModelFileError, match=r"compressed member 'src/data/0'.*torch.save never compresses"):
        read_pth(path)


def test_storage_too_small(tmp_path):
    path = one_tensor_zip(tmp_path / "m.pth", bytes(12), numel=4)
    with pytest.raises(ModelFileError, match=r"storage '0' of tensor 'w' holds 12 bytes, less than the 16"):
        read_pth(path)


def test_tensor_past_the_end_of_its_storage(tmp_path):
    path = one_tensor_zip(tmp_path / "m.pth", bytes(16), numel=4, offset=2, size=(3,))
    with pytest.raises(ModelFileError, match=r"tensor 'w' \(offset 2, 3 elements\) does not fit in its stor"):
        read_pth(path)


def test_integer_storage_is_refused(tmp_path):
    path = one_tensor_zip(tmp_path / "m.pth", bytes(32), storage="LongStorage")
    with pytest.raises(ModelFileError, match=r"tensor 'w' is stored as LongStorage \(int64\)"):
        read_pth(path)


def test_big_endian_is_refused(tmp_path):
    path = write_torch_zip(tmp_path / "m.pth", tensor_pickle([]), {}, byteorder="big")
    with pytest.raises(ModelFileError, match="big-endian"):
        read_pth(path)


def test_corrupt_data_pkl(tmp_path):
    path = write_pth(tmp_path / "m.pth", small_state_dict())
    data = bytearray(path.read_bytes())
    at = data.index(b"a.weight")
    data[at] ^= 0x20
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"data.pkl' is corrupt"):
        read_pth(path)


def test_garbage_pickle(tmp_path):
    path = pickle_zip(tmp_path / "m.pth", b"\x80\x02\xff\xfe garbage")
    with pytest.raises(ModelFileError, match=r"data.pkl is malformed"):
        read_pth(path)


@pytest.mark.parametrize(("data_pkl", "pattern"), [
    (pickle.dumps([1, 2], protocol=2), "holds a list, not a dict"),
    (pickle.dumps({1: 2}, protocol=2), "tensor name 1 is not a string"),
    (pickle.dumps({"a": 2}, protocol=2), "entry 'a' is 2, not a tensor"),
    (b"\x80\x02}(X\x01\x00\x00\x00a(X\x07\x00\x00\x00storagetQu.", r"malformed storage id \('storage',\)"),
    (b"\x80\x02}(X\x01\x00\x00\x00aX\x01\x00\x00\x00xQu.", "malformed storage id 'x'"),
])
def test_malformed_state_dict(tmp_path, data_pkl, pattern):
    with pytest.raises(ModelFileError, match=pattern):
        read_pth(pickle_zip(tmp_path / "m.pth", data_pkl))


def test_absurd_tensor_size_is_refused(tmp_path):
    pkl = tensor_pickle([("w", "FloatStorage", "0", 4, 0, (1 << 200, 1 << 200), (1, 1))])
    with pytest.raises(ModelFileError, match="impossibly large"):
        read_pth(pickle_zip(tmp_path / "m.pth", pkl))


@pytest.mark.parametrize(("entry", "pattern"), [
    ({"offset": -1}, r"storage offset must be a non-negative integer, got -1"),
    ({"size": (-4,)}, r"tensor size must be a non-negative integer, got -4"),
    ({"size": (2, -2)}, r"tensor size must be a non-negative integer, got -2"),
    ({"stride": (-1,)}, r"tensor stride must be a non-negative integer, got -1"),
    ({"numel": -4}, r"storage id .* has an invalid location or length"),
])
def test_negative_offsets_sizes_and_lengths_are_refused(tmp_path, entry, pattern):
    with pytest.raises(ModelFileError, match=pattern):
        read_pth(one_tensor_zip(tmp_path / "m.pth", bytes(16), **entry))


@pytest.mark.parametrize("rebuild", ["_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter"])
def test_backward_hooks_are_refused(rebuild):
    storage = safe_unpickle.StorageRef("FloatStorage", "0", "cpu", 4)
    fn = safe_unpickle.SafeUnpickler(b"", "x").find_class("torch._utils", rebuild)
    tensor = safe_unpickle._rebuild_tensor_v2(storage, 0, (4,), (1,), False, {})
    args = {
        "_rebuild_tensor_v2": (storage, 0, (4,), (1,), False),
        "_rebuild_tensor_v3": (storage, 0, (4,), (1,), False),
        "_rebuild_parameter": (tensor, False),
    }[rebuild]
    extra = (safe_unpickle.TorchDType("float32"),) if rebuild == "_rebuild_tensor_v3" else ()
    assert isinstance(fn(*args, {}, *extra), safe_unpickle.TensorRecord)  # no hooks: an empty dict
    assert isinstance(fn(*args, None, *extra), safe_unpickle.TensorRecord)
    with pytest.raises(pickle.UnpicklingError, match="backward hooks"):
        fn(*args, {"hook": 1}, *extra)


def test_storage_id_must_name_a_storage_class(tmp_path):
    pkl = tensor_pickle([("w", "FloatStorage", "0", 4, 0, (4,), (1,))])
    pkl = pkl.replace(b"ctorch\nFloatStorage\n", b"X\x0c\x00\x00\x00FloatStorage")
    with pytest.raises(ModelFileError, match="not a torch storage class"):
        read_pth(pickle_zip(tmp_path / "m.pth", pkl))


def test_storage_key_cannot_escape_the_data_folder(tmp_path):
    pkl = tensor_pickle([("w", "FloatStorage", "../data.pkl", 4, 0, (4,), (1,))])
    with pytest.raises(ModelFileError, match="invalid key"):
        read_pth(pickle_zip(tmp_path / "m.pth", pkl))


def test_nested_training_checkpoint_is_refused(tmp_path):
    inner = tensor_pickle([("w", "FloatStorage", "0", 4, 0, (4,), (1,))])[2:-1]
    pkl = b"\x80\x02}(X\x0a\x00\x00\x00state_dict" + inner + b"u."
    with pytest.raises(ModelFileError, match="entry 'state_dict' is a nested dict"):
        read_pth(pickle_zip(tmp_path / "m.pth", pkl))


def test_tensor_count_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(safe_unpickle, "MAX_TENSORS", 3)
    path = write_pth(tmp_path / "m.pth", {f"t{i}": np.ones(2, np.float32) for i in range(5)})
    with pytest.raises(ModelFileError, match="holds 5 entries, more than the limit of 3"):
        read_pth(path)


def test_pickle_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(safe_unpickle, "MAX_PICKLE_BYTES", 100)
    path = write_pth(tmp_path / "m.pth", small_state_dict())
    with pytest.raises(ModelFileError, match=r"data.pkl' is .* bytes, more than the limit of 100"):
        read_pth(path)


# --- pickles that would make the reader allocate without bound ------------------------------------


@pytest.mark.parametrize("opcode", [b"r\x00\x00\x00\x10", b"q\x05", b"p268435456\n"])
def test_memo_index_skipping_ahead_is_refused_before_anything_is_built(tmp_path, opcode):
    """A LONG_BINPUT of 2^28 made the unpickler grow its memo to 4.2 GB before `inspect` succeeded."""
    path = pickle_zip(tmp_path / "m.pth", b"\x80\x02}" + opcode + b".")
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match=r"data.pkl is malformed: memo index \d+ at byte 3 skips ahead"):
            read_pth(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_memo_indices_counting_up_are_read():
    """What Python's pickler writes (each new entry at the next index, reused by GET) stays readable."""
    pkl = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02\x940h\x03u."
    with pytest.raises(ModelFileError, match="entry 'a' is \\[\\], not a tensor"):
        safe_unpickle.unpickle_state_dict(pkl, "m.pth")


@pytest.mark.parametrize(("body", "what"), [
    (b"]" * 3000, "lists"),
    (b"X" + struct.pack("<I", 60_000) + b"x" * 60_000, "a long string"),
    (b"C\xff" + b"\0" * 255 + b"2" * 3000, "duplicated references"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_allocation_budget_is_charged_before_unpickling(tmp_path, monkeypatch, body, what):
    monkeypatch.setattr(safe_unpickle, "MAX_UNPICKLE_BYTES", 128 << 10)
    path = pickle_zip(tmp_path / "m.pth", b"\x80\x02" + body + b".")
    with pytest.raises(ModelFileError, match=r"data.pkl would make the reader allocate more than 0 MB"):
        read_pth(path)


@pytest.mark.parametrize("data_pkl", [b"\x80\x02L" + b"9" * 5000 + b"L\n.", b"\x80\x02X\xff\xff\xff\x7fab."])
def test_malformed_opcode_arguments(tmp_path, data_pkl):
    with pytest.raises(ModelFileError, match=r"data\.pkl is malformed"):
        read_pth(pickle_zip(tmp_path / "m.pth", data_pkl))


# --- hostile pickles: refused by name, nothing executed ------------------------------------------


def _reduce(module: str, name: str, arg: bytes) -> bytes:
    """Protocol-2 pickle calling module.name(arg) with a bytes-encoded protocol-2 argument."""
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + arg + b"\x85R."


def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


HOSTILE = {
    "os.system": lambda p: _reduce("os", "system", _str(f"touch {p}")),
    "posix.system": lambda p: _reduce("posix", "system", _str(f"touch {p}")),
    "builtins.eval": lambda p: _reduce("builtins", "eval", _str(f"open({str(p)!r}, 'w').close()")),
    "subprocess.Popen": lambda p: _reduce("subprocess", "Popen", b"](" + _str("touch") + _str(f"{p}") + b"e"),
    "collections.Counter": lambda p: pickle.dumps(__import__("collections").Counter(a=1), protocol=4),
    "argparse.Namespace": lambda p: b"\x80\x02cargparse\nNamespace\n)R.",
    # INST: protocol 0's class-and-call opcode also goes through find_class
    "os.popen": lambda p: b"(" + b"S'touch " + str(p).encode() + b"'\nios\npopen\n.",
}


@pytest.mark.parametrize("global_name", HOSTILE)
def test_forbidden_global_is_refused_and_not_run(tmp_path, global_name):
    marker = tmp_path / "pwned"
    path = pickle_zip(tmp_path / "m.pth", HOSTILE[global_name](marker))
    with pytest.raises(UnsafePickleError) as err:
        read_pth(path)
    assert err.value.global_name == global_name
    assert global_name in str(err.value) and str(path) in str(err.value)
    assert not marker.exists()


def test_forbidden_global_inside_a_tensor_is_refused(tmp_path):
    pkl = tensor_pickle([("w", "FloatStorage", "0", 4, 0, (4,), (1,))])
    pkl = pkl.replace(b"ctorch\nFloatStorage\n", b"cos\nsystem\n")
    with pytest.raises(UnsafePickleError, match=r"'os.system'"):
        read_pth(pickle_zip(tmp_path / "m.pth", pkl))


def test_refused_module_is_never_imported(tmp_path, capsys):
    sys.modules.pop("this", None)  # importing `this` prints the Zen of Python
    path = pickle_zip(tmp_path / "m.pth", b"\x80\x02cthis\ns\n.")
    with pytest.raises(UnsafePickleError, match=r"'this.s'"):
        read_pth(path)
    assert "this" not in sys.modules
    assert capsys.readouterr().out == ""


def test_torch_names_map_to_stand_ins():
    """The allowed names resolve to local harmless objects, never to torch (which is not even installed)."""
    u = safe_unpickle.SafeUnpickler(b"", "x")
    rebuild = u.find_class("torch._utils", "_rebuild_tensor_v2")
    assert rebuild.__module__ == "runtime.formats.safe_unpickle"
    assert u.find_class("torch", "BFloat16Storage") == safe_unpickle.StorageType("BFloat16Storage")
    assert u.find_class("collections", "OrderedDict")() == {}
    with pytest.raises(UnsafePickleError):
        u.find_class("torch", "load")
    assert "torch" not in sys.modules
