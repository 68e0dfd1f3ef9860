"""Model status from the files on disk, housekeeping, and `add` of local files."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.convert import convert
from runtime.errors import ModelFileError
from runtime.quant.types import DType
from runtime.registry.catalog import RegistryError, load_catalog
from runtime.registry.status import (
    NOT_DOWNLOADED,
    PAUSED,
    READY,
    SOURCE_ONLY,
    converted_path,
    delete_files,
    delete_source,
    guess_arch,
    model_status,
    models_dir,
    register_local,
    register_url,
    slug,
    source_path,
)

ROOT = Path(__file__).resolve().parents[2]
RWKVCPP = ROOT / "tests/fixtures/rwkvcpp/tiny-fp16.bin"


def test_states_follow_the_files(private_dirs, tiny_pth):
    entry = load_catalog().get("pile-169m")
    assert model_status(entry).state == NOT_DOWNLOADED
    folder = models_dir() / "pile-169m"
    assert source_path(entry) == folder / entry.file and folder.parent == private_dirs["data"] / "models"
    folder.mkdir(parents=True)
    (folder / (entry.file + ".part")).write_bytes(b"x" * 1000)
    st = model_status(entry)
    assert (st.state, st.partial_bytes, st.disk_bytes) == (PAUSED, 1000, 1000)
    (folder / (entry.file + ".part")).rename(source_path(entry))
    source_path(entry).write_bytes(tiny_pth)
    assert model_status(entry).state == SOURCE_ONLY
    with pytest.raises(RegistryError, match="no converted file yet"):
        delete_source(entry)
    convert(source_path(entry), converted_path(entry, DType.Q8_0), "q8_0")
    st = model_status(entry)
    assert st.state == READY and set(st.converted) == {DType.Q8_0}
    assert st.disk_bytes == len(tiny_pth) + converted_path(entry, DType.Q8_0).stat().st_size
    assert st.best_file() == converted_path(entry, DType.Q8_0)
    assert delete_source(entry) == len(tiny_pth) and not source_path(entry).exists()
    assert model_status(entry).state == READY
    assert delete_files(entry) > 0 and not folder.exists()
    assert model_status(entry).state == NOT_DOWNLOADED


def test_add_local_files(tmp_path, tiny_pth):
    pth = tmp_path / "My Raven Test.pth"
    pth.write_bytes(tiny_pth)
    entry = register_local(pth)
    assert (entry.id, entry.family, entry.arch, entry.n_layer, entry.n_embd, entry.vocab) == (
        "my-raven-test", "raven", "4", 2, 64, 256)
    assert entry.path == pth and entry.size == len(tiny_pth)
    assert model_status(entry).state == SOURCE_ONLY
    assert load_catalog().get("my-raven-test").origin == "user"
    assert register_local(pth).id == "my-raven-test"  # adding the same file again changes nothing
    with pytest.raises(RegistryError, match="does not delete it"):
        delete_source(entry)

    gguf = convert(pth, tmp_path / "fast.gguf", "q5_1").path
    g = register_local(gguf, name="Fast one", family="world")
    st = model_status(g)
    assert st.state == READY and st.converted == {DType.Q5_1: gguf} and st.disk_bytes == 0
    assert g.family == "world" and g.name == "Fast one"

    b = register_local(RWKVCPP)
    assert model_status(b).converted == {DType.F16: RWKVCPP}

    with pytest.raises(RegistryError, match="already used"):
        register_local(pth, model_id="raven-7b")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError, match=r"junk\.pth"):
        register_local(junk)
    assert "junk" not in load_catalog().models


def test_register_url_guesses_from_the_name():
    url = "https://example.org/files/RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth"
    e = register_url(url, sha256="ab" * 32)
    assert (e.id, e.arch, e.family, e.file, e.sha256) == (
        "rwkv-x070-world-0.1b-v2.8-20241210-ctx4096", "7", "world7", url.rsplit("/", 1)[1], "ab" * 32)
    assert register_url(url).id == e.id  # known address: same entry
    assert register_url(load_catalog().get("raven-7b").url).id == "raven-7b"


def test_naming_helpers():
    assert slug("RWKV-4-Raven-7B-v12-Eng98%-Other2%") == "rwkv-4-raven-7b-v12-eng98-other2"
    assert slug("???") == "model"
    assert [guess_arch(n) for n in ("RWKV-4-Pile-169M", "RWKV-5-World-1B5", "RWKV-x060-World-3B", "rwkv7-g1-0.1b")] \
        == ["4", "5", "6", "7"]
