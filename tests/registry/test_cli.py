"""`rwkv-tui get`, `models` and `add` through the real command-line entry point."""

from __future__ import annotations

import hashlib

import pytest

from runtime.formats.gguf_file import read_gguf
from runtime.quant.types import DType
from runtime.registry.catalog import load_catalog, save_user_entry
from runtime.registry.jobs import JobQueue
from runtime.registry.status import READY, converted_path, model_status
from tests.conftest import PINNED_READ_GBS
from tests.registry.server import serve
from tui.cli import main as cli
from tui.commands import output
from tui.units import human_bytes


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Tables and messages on one line each, whatever the terminal the tests run in."""
    for c in (output.console, output.err_console):
        monkeypatch.setattr(c, "_width", 400)


def test_get_a_url_registers_downloads_and_converts(tiny_pth, capsys):
    sha = hashlib.sha256(tiny_pth).hexdigest()
    with serve({"/BlinkDL/x/resolve/main/Tiny-Raven.pth": tiny_pth}) as srv:
        url = srv.url("/BlinkDL/x/resolve/main/Tiny-Raven.pth")
        assert cli(["get", url, "--sha256", sha.upper(), "--type", "q8_0"]) == 0
    out = capsys.readouterr().out
    assert "registered tiny-raven" in out and "ready:" in out
    entry = load_catalog().get("tiny-raven")
    assert (entry.url, entry.sha256, entry.family, entry.n_layer, entry.n_embd) == (url, sha, "raven", 2, 64)
    gguf = converted_path(entry, DType.Q8_0)
    assert read_gguf(gguf).metadata["rwkv_tui.source.sha256"] == sha
    assert model_status(entry).state == READY

    assert cli(["models", "--runnable"]) == 0
    listing = capsys.readouterr().out
    row = next(line for line in listing.splitlines() if line.startswith("tiny-raven"))
    assert "ready (q8_0)" in row
    assert "world5-0.1b" not in listing and "world7-0.1b" in listing and "raven-7b" in listing


def test_get_with_a_wrong_sha256_fails_and_says_both_hashes(tiny_pth, capsys):
    with serve({"/m.pth": tiny_pth}) as srv:
        save_user_entry({"id": "mine", "name": "Mine", "family": "pile", "arch": "4", "file": "m.pth",
                         "url": srv.url("/m.pth"), "sha256": "0" * 64})
        assert cli(["get", "mine", "--type", "q5_1"]) == 2
    err = capsys.readouterr().err
    assert "0" * 64 in err and hashlib.sha256(tiny_pth).hexdigest() in err and "failed" in err


def test_get_unknown_id_and_bad_options(capsys):
    assert cli(["get", "raven-7"]) == 2
    assert "did you mean raven-7b" in capsys.readouterr().err
    assert cli(["get", "raven-7b", "--sha256", "xyz"]) == 2
    assert "64 hexadecimal digits" in capsys.readouterr().err
    assert cli(["get", "world5-0.1b"]) == 2
    assert "RWKV-5 model" in capsys.readouterr().err and JobQueue().list() == []


def test_models_lists_status_and_reports_bad_user_entries(private_dirs, capsys):
    private_dirs["config"].mkdir(parents=True, exist_ok=True)
    (private_dirs["config"] / "models.toml").write_text('[[model]]\nid = "x"\nname = "X"\nfamily = "pile"\n')
    assert cli(["models"]) == 0
    captured = capsys.readouterr()
    assert "models.toml line 1: model 'x'" in captured.err
    rows = {line.split()[0]: line for line in captured.out.splitlines() if line.strip()}
    assert "not downloaded" in rows["pile-169m"] and "q8_0" in rows["pile-169m"]
    assert "q5_k" in rows["raven-7b"] and "not yet" in rows["world5-0.1b"] and "not yet" not in rows["world7-0.1b"]


def test_add_a_local_checkpoint_then_convert_it_with_get(tmp_path, tiny_pth, capsys):
    pth = tmp_path / "Local-Novel.pth"
    pth.write_bytes(tiny_pth)
    assert cli(["add", str(pth)]) == 0
    out = capsys.readouterr().out
    assert "added local-novel" in out and "source only" in out and "rwkv-tui get local-novel" in out
    assert cli(["get", "local-novel", "--type", "q4_0", "--delete-source"]) == 0
    entry = load_catalog().get("local-novel")
    assert pth.exists()  # the user's own file is never deleted
    assert model_status(entry).converted == {DType.Q4_0: converted_path(entry, DType.Q4_0)}
    assert cli(["get", "local-novel", "--type", "q5_k_m"]) == 0, capsys.readouterr().err  # a K mix by name
    assert set(model_status(entry).converted) == {DType.Q4_0, DType.Q5_K}
    assert cli(["add", str(tmp_path / "nothing.pth")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_delete_source_after_conversion(tiny_pth, capsys):
    with serve({"/m.pth": tiny_pth}) as srv:
        save_user_entry({"id": "mine", "name": "Mine", "family": "pile", "arch": "4", "file": "m.pth",
                         "url": srv.url("/m.pth")})
        assert cli(["get", "mine", "--no-convert"]) == 0
        assert cli(["models", "--delete-source", "mine"]) == 2  # nothing converted yet
        assert "no converted file yet" in capsys.readouterr().err
        assert cli(["get", "mine", "--type", "q8_0"]) == 0
        assert cli(["models", "--delete-source", "mine"]) == 0
    assert f"freed {human_bytes(len(tiny_pth))}" in capsys.readouterr().out
    assert model_status(load_catalog().get("mine")).source is None


def test_a_failed_get_of_a_url_leaves_no_registration_and_no_folder(capsys):
    from runtime.registry.status import models_dir

    with serve({}) as srv:  # every file answers 404
        assert cli(["get", srv.url("/BlinkDL/x/resolve/main/Gone-Raven.pth")]) == 2
    assert "404" in capsys.readouterr().err
    catalog = load_catalog()
    assert "gone-raven" not in catalog.models
    assert not (models_dir() / "gone-raven").exists()
    assert cli(["models"]) == 0
    assert "gone-raven" not in capsys.readouterr().out


def test_a_failed_get_of_a_url_keeps_only_the_resumable_part(tiny_pth, capsys):
    from runtime.registry.status import models_dir

    folder = models_dir() / "half-raven"
    folder.mkdir()
    (folder / "Half-Raven.pth.part").write_bytes(tiny_pth[:1000])  # from an earlier, interrupted get
    with serve({}) as srv:
        url = srv.url("/Half-Raven.pth")
        assert cli(["get", url, "--type", "q8_0"]) == 2
        assert "half-raven" not in load_catalog().models
        assert [p.name for p in folder.iterdir()] == ["Half-Raven.pth.part"]
        srv.files["/Half-Raven.pth"] = tiny_pth  # the address works again: the same id resumes the .part
        assert cli(["get", url, "--type", "q8_0"]) == 0
    assert ("/Half-Raven.pth", "bytes=1000-") in srv.requests
    assert model_status(load_catalog().get("half-raven")).state == READY


def test_a_get_of_a_url_that_cannot_convert_leaves_no_registration(capsys):
    with serve({}) as srv:
        url = srv.url("/RWKV-5-World-0.4B.pth")
        assert cli(["get", url]) == 2
    err = capsys.readouterr().err
    assert f"rwkv-tui get {url} --no-convert" in err
    assert "rwkv-5-world-0.4b" not in load_catalog().models


def test_add_and_chat_guess_the_same_family_for_a_plain_rwkv4_file(tmp_path, tiny_pth, capsys):
    from runtime.text.templates import guess_family

    pth = tmp_path / "rwkv4-tiny.pth"
    pth.write_bytes(tiny_pth)
    assert cli(["add", str(pth)]) == 0
    assert "family raven" in capsys.readouterr().out
    assert load_catalog().get("rwkv4-tiny").family == guess_family(pth.name, "gpt-neox-20b") == "raven"
    for name, family in (("RWKV-4-Pile-169M.pth", "pile"), ("RWKV-4-Novel-3B.pth", "novel")):
        named = tmp_path / name
        named.write_bytes(tiny_pth)
        assert cli(["add", str(named)]) == 0
        assert load_catalog().get(named.stem.lower()).family == guess_family(name, "gpt-neox-20b") == family


def test_adding_a_file_again_keeps_the_name_and_family_set_before(tmp_path, tiny_pth, capsys):
    pth = tmp_path / "rwkv4-tiny.pth"
    pth.write_bytes(tiny_pth)
    assert cli(["add", str(pth), "--id", "mine", "--name", "My model", "--family", "pile"]) == 0
    assert cli(["add", str(pth)]) == 0
    entry = load_catalog().get("mine")
    assert (entry.name, entry.family) == ("My model", "pile")
    assert [e.id for e in load_catalog().models.values() if e.path == pth.resolve()] == ["mine"]
    assert cli(["add", str(pth), "--family", "novel"]) == 0  # given again: changed
    assert (load_catalog().get("mine").name, load_catalog().get("mine").family) == ("My model", "novel")


@pytest.fixture
def own_q5_1(tmp_path, tiny_pth):
    """A user's own Q5_1 GGUF, added with `rwkv-tui add` (the registry would recommend Q8_0 for it)."""
    from runtime.convert import convert

    pth = tmp_path / "Mine.pth"
    pth.write_bytes(tiny_pth)
    gguf = convert(pth, tmp_path / "mine-fast.gguf", "q5_1").path
    assert cli(["add", str(gguf)]) == 0
    return gguf


def test_models_lists_own_files_first_with_their_size_and_type(own_q5_1, capsys):
    capsys.readouterr()
    assert cli(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()  # not a terminal: plain columns, a line per model
    lines = [line for line in lines if not line.startswith("Recommended here:")]  # once RWKV-7 runs
    header, first = lines[0], lines[1]

    def cell(row: str, column: str) -> str:
        start = header.index(column)
        return row[start:].split("  ")[0].strip() if column not in ("disk", "RAM") else \
            row[:start + len(column)].split("  ")[-1].strip()

    assert cell(first, "id") == "mine-fast"
    assert cell(first, "format") == "q5_1"
    assert cell(first, "disk") == human_bytes(own_q5_1.stat().st_size)
    assert cell(first, "status") == "ready (q5_1)"
    assert len(lines) == 2 + len(load_catalog().models)  # header, rows, the free-space line
    assert not any("│" in line or "┃" in line for line in lines)


def test_models_in_an_80_column_terminal_fits_a_line_per_model(own_q5_1, capsys, monkeypatch):
    monkeypatch.setattr(output.console, "_force_terminal", True)
    monkeypatch.setattr(output.console, "_width", 80)
    monkeypatch.setattr(output.console, "_color_system", None)
    capsys.readouterr()
    assert cli(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 80 for line in lines)
    lines = lines[next(i for i, line in enumerate(lines) if line.split()[:1] == ["id"]):]  # a recommendation first
    ids = list(load_catalog().models)
    rows = []
    for line in lines[1:]:
        first = line.split()[0] if line.strip() else ""
        rows += [i for i in ids if first == i or (first.endswith("…") and i.startswith(first[:-1]))]
    assert sorted(rows) == sorted(ids)  # every model on exactly one line
    assert lines[1].split()[0] == "mine-fast"


def test_models_recommends_the_g1_that_fits_and_answers_readably_first(private_dirs, capsys, monkeypatch):
    from runtime.registry import catalog as catalog_module
    from runtime.registry import recommend

    monkeypatch.setattr(catalog_module, "RUNNABLE_VERSIONS", ("4", "7"))
    monkeypatch.setattr(recommend, "machine_resources", lambda folder: (3 << 30, 500 << 30))
    starter = recommend.starter_model(load_catalog().models.values(), free_ram=3 << 30, read_gbs=PINNED_READ_GBS)
    rate = recommend.decode_rate(starter.entry, starter.choice, PINNED_READ_GBS)
    assert cli(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"Recommended here: {starter.entry.id} ({starter.entry.name}) in "
                               f"{starter.choice.name.lower()}") and f"rwkv-tui get {starter.entry.id}" in lines[0]
    assert f"about {rate:.0f} tokens/s" in lines[0]
    assert lines[2].split()[0] == starter.entry.id  # the first row (nothing is on this machine yet)
    monkeypatch.setattr(recommend, "machine_resources", lambda folder: (64 << 20, 500 << 30))
    assert cli(["models"]) == 0
    assert not capsys.readouterr().out.startswith("Recommended")  # nothing fits: no suggestion


def test_get_a_g1_model_then_chat_with_it_thinking(private_dirs, tmp_path, capsys, monkeypatch):
    """A G1 registry entry (RWKV-7, World vocabulary) is downloaded, verified, converted in its default
    format and chatted with, thinking on, by id."""
    import io

    from runtime.chat.store import ConversationStore
    from tests.support.synthetic import v7_state_dict
    from tests.support.torch_writer import write_pth

    sd = v7_state_dict(n_layer=2, n_embd=64, head_size=32, n_vocab=65536, ranks=(8, 8, 8, 16), seed=5)
    pth = write_pth(tmp_path / "rwkv7-g1x-tiny.pth", sd, dtype="bfloat16").read_bytes()
    path = "/BlinkDL/rwkv7-g1/resolve/main/rwkv7-g1x-tiny.pth"
    with serve({path: pth}) as srv:
        save_user_entry({"id": "g1-tiny", "name": "G1 tiny", "family": "g1", "arch": "7", "n_layer": 2,
                         "n_embd": 64, "file": "rwkv7-g1x-tiny.pth", "url": srv.url(path),
                         "sha256": hashlib.sha256(pth).hexdigest()})
        assert cli(["get", "g1-tiny"]) == 0, capsys.readouterr().err
    entry = load_catalog().get("g1-tiny")
    assert model_status(entry).state == READY and set(model_status(entry).converted) == {DType.Q8_0}
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n/think\n"))
    assert cli(["chat", "g1-tiny", "--think", "--max-tokens", "5", "--lines"]) == 0, capsys.readouterr().err
    assert "thinking is on" in capsys.readouterr().out
    with ConversationStore.open() as store:
        record = store.get_conversation(store.last_conversation_id())
        turns = [(m.role, m.think) for m in store.messages(record.id) if m.role != "init"]
    assert record.family == "g1" and record.think and turns == [("user", True), ("assistant", True)]
