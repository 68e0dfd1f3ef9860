"""The runtime's own `.pth` writer (state exports): what it writes reads back exactly through the
project's torch-zip reader, tensors 64-byte aligned, names and shapes kept, atomically replaced."""

from __future__ import annotations

import zipfile

import numpy as np

from runtime.formats.pth import read_pth
from runtime.formats.pth_writer import ALIGNMENT, write_pth


def test_written_tensors_read_back_exactly_and_aligned(tmp_path):
    rng = np.random.default_rng(4)
    tensors = {"blocks.0.att.time_state": rng.standard_normal((2, 8, 8)).astype(np.float32),
               "blocks.1.att.time_state": rng.standard_normal((2, 8, 8)).astype(np.float32),
               "vector": np.arange(5, dtype=np.float32)}
    path = write_pth(tmp_path / "s.pth", tensors)
    back = read_pth(path)
    assert list(back) == list(tensors)
    for name, a in tensors.items():
        assert back[name].shape == a.shape and np.array_equal(back[name].numpy(), a)
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        members = [i for i in z.infolist() if "/data/" in i.filename]
        assert z.infolist()[0].filename == "s/data.pkl" and len(members) == 3
        for info in members:
            at = info.header_offset
            name_len = int.from_bytes(raw[at + 26 : at + 28], "little")
            extra_len = int.from_bytes(raw[at + 28 : at + 30], "little")
            assert (at + 30 + name_len + extra_len) % ALIGNMENT == 0
    write_pth(path, {"vector": np.ones(3, np.float32)})  # replaced whole
    assert list(read_pth(path)) == ["vector"]
