"""`FileHandle`: every read is checked against the file before the OS sees it."""

from __future__ import annotations

import mmap

import pytest

from runtime.errors import ModelFileError
from runtime.formats.tensors import FileHandle


@pytest.fixture(params=["descriptor", "mapping"])
def handle(tmp_path, request):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(100)))
    if request.param == "descriptor":
        yield FileHandle(path)
        return
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        fh = FileHandle(path, mm)
        assert fh.mapping is not None
        yield fh
        fh.mapping = None


def test_reads_inside_the_file(handle):
    assert handle.pread(0, 3) == b"\x00\x01\x02"
    assert handle.pread(97, 3) == b"\x61\x62\x63"
    assert handle.pread(100, 0) == b""
    buf = bytearray(4)
    handle.pread_into(96, memoryview(buf))
    assert buf == bytes([96, 97, 98, 99])


@pytest.mark.parametrize(("offset", "nbytes", "problem"), [
    (-1, 4, "damaged file: a read of 4 bytes at offset -1"),
    (-4000, 10, "damaged file: a read of 10 bytes at offset -4000"),
    (0, -1, "damaged file: a read of -1 bytes at offset 0"),
    (97, 4, "file is truncated: wanted 4 bytes at offset 97"),
    (100, 1, "file is truncated: wanted 1 bytes at offset 100"),
    (1 << 62, 1, "file is truncated"),
])
def test_reads_outside_the_file_are_model_file_errors(handle, offset, nbytes, problem):
    with pytest.raises(ModelFileError, match=problem) as err:
        handle.pread(offset, nbytes)
    assert str(handle.path) in str(err.value)
    if nbytes >= 0:
        with pytest.raises(ModelFileError, match=problem):
            handle.pread_into(offset, memoryview(bytearray(nbytes)))
