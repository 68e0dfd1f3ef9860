"""Our GGUF writer and strict reader: round trip, interchange with the gguf package, bad files."""

import contextlib
import struct
import tracemalloc

import gguf
import numpy as np
import pytest

from runtime.errors import ModelFileError
from runtime.formats import gguf_file
from runtime.formats.gguf_file import ALIGNMENT, TensorPlan, read_gguf, write_gguf
from runtime.quant.types import DType


def write_sample(path, tensors: dict[str, np.ndarray], metadata=()):
    plan = [TensorPlan(n, a.shape, DType.F32 if a.dtype == np.float32 else DType.F16) for n, a in tensors.items()]

    def chunks(t):
        data = tensors[t.name].tobytes()
        for i in range(0, len(data), 1000):  # several chunks per tensor
            yield data[i : i + 1000]

    with open(path, "wb") as f:
        write_gguf(f, "rwkv4", list(metadata), plan, chunks)


@pytest.fixture
def sample(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {
        "a.weight": rng.standard_normal((7, 33)).astype(np.float32),
        "b.weight": rng.standard_normal((5, 64)).astype(np.float16),
        "c": rng.standard_normal(3).astype(np.float32),
    }
    meta = [("rwkv4.block_count", 2), ("general.name", "näme"), ("rwkv_tui.transforms", ["x", "y"]),
            ("rwkv4.layer_norm_epsilon", 1e-5), ("big", 1 << 40), ("flag", True)]
    path = tmp_path / "m.gguf"
    write_sample(path, tensors, meta)
    return path, tensors, meta


def test_round_trip(sample):
    path, tensors, meta = sample
    g = read_gguf(path)
    assert g.version == 3
    assert g.alignment == ALIGNMENT
    assert g.metadata["general.architecture"] == "rwkv4"
    for k, v in meta:
        assert g.metadata[k] == pytest.approx(v) if isinstance(v, float) else g.metadata[k] == v
    for name, arr in tensors.items():
        t = g.tensors[name]
        assert t.shape == arr.shape
        assert t.offset % ALIGNMENT == 0
        np.testing.assert_array_equal(t.numpy(), arr.astype(np.float32))


def test_gguf_package_reads_our_files(sample):
    path, tensors, _ = sample
    r = gguf.GGUFReader(path)
    got = {t.name: np.asarray(t.data) for t in r.tensors}
    for name, arr in tensors.items():
        np.testing.assert_array_equal(got[name].reshape(arr.shape), arr)


def test_every_truncation_is_a_clear_error(sample):
    path, _, _ = sample
    data = path.read_bytes()
    cut = path.with_name("cut.gguf")
    for n in sorted({0, 3, 4, 8, 20, 24, 40, 100, 200, 300, len(data) // 2, len(data) - 1}):
        cut.write_bytes(data[:n])
        with pytest.raises(ModelFileError, match=r"cut\.gguf: .*(truncated|too short|empty|malformed)"):
            read_gguf(cut)


def test_every_cut_inside_the_header_and_metadata_is_a_clear_error(sample):
    """Each length from 0 to the end of the tensor infos: a reader taking one byte too many anywhere
    (struct.error, IndexError) or accepting a short read fails here."""
    path, _, _ = sample
    data = path.read_bytes()
    end = read_gguf(path).data_offset
    cut = path.with_name("cut.gguf")
    for n in range(end):
        cut.write_bytes(data[:n])
        try:
            read_gguf(cut)
        except ModelFileError as e:
            assert str(cut) in str(e) and ("truncated" in e.problem or "malformed" in e.problem), (n, e)
        else:
            raise AssertionError(f"a file cut to {n} of its {end} header bytes was read")


def test_random_corruption_never_crashes_or_hangs(sample):
    path, _, _ = sample
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(7)
    bad = path.with_name("bad.gguf")
    for _ in range(300):
        mutated = bytearray(data)
        for pos in rng.integers(4, 400, size=3):
            mutated[pos] = rng.integers(0, 256)
        bad.write_bytes(mutated)
        with contextlib.suppress(ModelFileError):
            read_gguf(bad)


def header(n_tensors=0, n_kv=1):
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


def kv_string(key: str) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k


def test_declared_array_longer_than_file_is_refused_at_once(tmp_path):
    # gguf's own reader walks a declared count of 2**62 elements one by one; ours checks it first
    p = tmp_path / "huge.gguf"
    p.write_bytes(header() + kv_string("x") + struct.pack("<IIQ", 9, 0, 1 << 62) + b"\0" * 64)
    # the message names the declared count: refused by checking it against the bytes left, not by
    # walking elements until the file ran out
    with pytest.raises(ModelFileError, match="array of 4611686018427387904 elements does not fit"):
        read_gguf(p)


def arrays_file(path, arrays: list[int], etype: int, item: bytes):
    """A GGUF of metadata arrays a0, a1, … of `arrays[i]` elements of type `etype`, each stored as `item`."""
    body = b"".join(kv_string(f"a{i}") + struct.pack("<IIQ", 9, etype, n) + item * n for i, n in enumerate(arrays))
    path.write_bytes(header(n_kv=len(arrays)) + body + b"\0" * 64)
    return path


def test_a_huge_metadata_array_is_refused_before_it_is_built(tmp_path, monkeypatch):
    """3 MB of bytes in one array would become 108 MB of Python ints."""
    monkeypatch.setattr(gguf_file, "MAX_ARRAY_ELEMENTS", 2_000_000)
    path = arrays_file(tmp_path / "array.gguf", [3_000_000], 0, b"\0")
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match="metadata arrays hold more than 2000000 elements in all"):
            read_gguf(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak


@pytest.mark.parametrize(("etype", "item"), [(4, bytes(4)), (8, struct.pack("<Q", 1) + b"x")], ids=["u32", "str"])
def test_metadata_arrays_are_bounded_in_all(tmp_path, monkeypatch, etype, item):
    monkeypatch.setattr(gguf_file, "MAX_ARRAY_ELEMENTS", 1000)
    assert len(read_gguf(arrays_file(tmp_path / "ok.gguf", [500, 500], etype, item)).metadata["a1"]) == 500
    with pytest.raises(ModelFileError, match="metadata arrays hold more than 1000 elements in all"):
        read_gguf(arrays_file(tmp_path / "many.gguf", [400, 400, 201], etype, item))


def test_wrong_magic(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"GGML" + b"\0" * 60)
    with pytest.raises(ModelFileError, match=r"x\.gguf: wrong magic"):
        read_gguf(p)


def test_unknown_version(tmp_path):
    p = tmp_path / "v9.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 9, 0, 0) + b"\0" * 40)
    with pytest.raises(ModelFileError, match="unsupported GGUF version 9"):
        read_gguf(p)


def test_tensor_past_end_of_file(tmp_path, sample):
    path, _, _ = sample
    data = path.read_bytes()
    p = tmp_path / "short.gguf"
    p.write_bytes(data[: len(data) - 8])
    with pytest.raises(ModelFileError, match=r"short\.gguf: file is truncated: tensor 'c'"):
        read_gguf(p)


def test_unknown_tensor_type(tmp_path):
    name = b"w"
    info = struct.pack("<Q", len(name)) + name + struct.pack("<IQ", 1, 32) + struct.pack("<IQ", 16, 0)
    p = tmp_path / "k.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + info + b"\0" * 256)
    with pytest.raises(ModelFileError, match=r"tensor 'w' has type IQ2_XXS \(ggml type 16\), which this version"):
        read_gguf(p)


def one_tensor_file(path, dims=(32,), dtype=0, offset=0, kvs=b"", n_kv=0, alignment=32, n_dims=None):
    """A GGUF with one F32 tensor 'w' (`dims` innermost first) and its data after the aligned header."""
    name = b"w"
    n_dims = len(dims) if n_dims is None else n_dims
    info = struct.pack("<Q", len(name)) + name + struct.pack("<I", n_dims) + struct.pack(f"<{len(dims)}Q", *dims)
    info += struct.pack("<IQ", dtype, offset)
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, n_kv) + kvs + info
    head += b"\0" * (-len(head) % alignment)
    path.write_bytes(head + bytes(4 * int(np.prod(dims)) + offset + 256))
    return path


def kv_u32(key: str, value: int) -> bytes:
    return kv_string(key) + struct.pack("<II", 4, value)


def test_one_tensor_file_is_read(tmp_path):
    g = read_gguf(one_tensor_file(tmp_path / "ok.gguf", dims=(32, 1, 1, 2)))
    assert g.tensors["w"].shape == (2, 1, 1, 32)
    g = read_gguf(one_tensor_file(tmp_path / "a.gguf", offset=64, kvs=kv_u32("general.alignment", 64), n_kv=1,
                                  alignment=64))
    assert g.alignment == 64 and g.tensors["w"].offset == g.data_offset + 64


@pytest.mark.parametrize("n_dims", [0, 5, 6])
def test_dimension_count_outside_1_to_4_is_refused(tmp_path, n_dims):
    dims = (32,) + (1,) * (n_dims - 1) if n_dims else ()
    with pytest.raises(ModelFileError, match=f"tensor 'w' has {n_dims} dimensions"):
        read_gguf(one_tensor_file(tmp_path / "d.gguf", dims=dims, n_dims=n_dims))


@pytest.mark.parametrize("offset", [4, 16, 31, 33])
def test_tensor_offset_off_the_alignment_is_refused(tmp_path, offset):
    with pytest.raises(ModelFileError, match="tensor 'w' is not aligned to 32 bytes"):
        read_gguf(one_tensor_file(tmp_path / "o.gguf", offset=offset))


@pytest.mark.parametrize("alignment", [0, 3, 48, 1 << 31 | 1])
def test_alignment_that_is_not_a_power_of_two_is_refused(tmp_path, alignment):
    path = one_tensor_file(tmp_path / "al.gguf", kvs=kv_u32("general.alignment", alignment), n_kv=1)
    with pytest.raises(ModelFileError, match=f"general.alignment {alignment} is not a power of two"):
        read_gguf(path)
