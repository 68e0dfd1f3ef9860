"""models.toml: the shipped entries, validation with line numbers, the user's additions and overrides."""

from __future__ import annotations

import re
import textwrap
import tomllib
from pathlib import Path

import pytest

from runtime.quant.types import DType
from runtime.registry.catalog import (
    SHIPPED_PATH,
    RegistryError,
    dump_entry,
    load_catalog,
    model_header_lines,
    remove_user_entry,
    save_user_entry,
)
from runtime.registry.recommend import n_params

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = textwrap.dedent('''\
    [family.raven]
    tokenizer = "20b"
    init = """A conversation.
    [[model]]
    """

    [family.world]
    tokenizer = "world"
''')
GOOD = textwrap.dedent('''\
    [[model]]
    id = "good"
    name = "Good"
    family = "raven"
    arch = "4"
    n_layer = 2
    n_embd = 64
    file = "good.pth"
    url = "https://example.org/models/good.pth"
''')


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def entry(**fields) -> str:
    base = {"id": "m", "name": "M", "family": "raven", "arch": "4", "file": "m.pth", "url": "https://example.org/m.pth"}
    base.update(fields)
    return dump_entry({k: v for k, v in base.items() if v is not None})


# --- the shipped registry ------------------------------------------------------------------------


def test_shipped_registry_loads_without_warnings_and_lists_the_known_models():
    cat = load_catalog()
    assert cat.warnings == []
    ids = set(cat.models)
    for want in ["raven-1b5", "raven-3b", "raven-7b", "raven-14b", "raven-3b-chneng", "raven-7b-chneng",
                 "novel-3b-chn", "novel-3b-chneng", "novel-7b-chn", "novel-7b-chneng", "novel-7b-chneng-chnpro",
                 "pile-169m", "pile-430m", "pile-1b5", "pile-3b", "pile-7b", "pile-14b",
                 "world4-0.1b", "world4-7b", "world5-7b", "world6-7b", "world7-0.1b"]:
        assert want in ids
    assert {cat.models[i].family for i in ids} <= set(cat.families)
    assert {"raven", "world", "novel", "pile", "g1", "world7"} <= set(cat.families)


def test_rwkv56_world_entries_cover_every_size_with_their_manifest_values():
    """Every RWKV-5 and RWKV-6 World file of RWKV-Runner's manifest, with its shape, size and sha256."""
    models = load_catalog().models
    v56 = {e.file: e for e in models.values() if e.arch in ("5", "5.2", "6")}
    want = {  # file: (arch, n_layer, n_embd, size, sha256 prefix), as josStorer/RWKV-Runner's manifest.json has them
        "RWKV-5-World-0.1B-v1-20230803-ctx4096.pth": ("5", 12, 768, 385598386, "c844a3ee"),
        "RWKV-5-World-0.4B-v2-20231113-ctx4096.pth": ("5.2", 24, 1024, 923523954, "5a288c54"),
        "RWKV-5-World-1B5-v2-20231025-ctx4096.pth": ("5.2", 24, 2048, 3155590194, "5a89f56b"),
        "RWKV-5-World-3B-v2-20231113-ctx4096.pth": ("5.2", 32, 2560, 6126106674, "a4bd4303"),
        "RWKV-5-World-7B-v2-20240128-ctx4096.pth": ("5.2", 32, 4096, 15036197526, "a88c7274"),
        "RWKV-x060-World-1B6-v2.1-20240328-ctx4096.pth": ("6", 24, 2048, 3199845663, "cda1f0eb"),
        "RWKV-x060-World-3B-v2.1-20240417-ctx4096.pth": ("6", 32, 2560, 6199859158, "c7c4e68e"),
        "RWKV-x060-World-7B-v2.1-20240507-ctx4096.pth": ("6", 32, 4096, 15271627549, "81863a63"),
        "RWKV-x060-World-7B-v3-20241112-ctx4096.pth": ("6", 32, 4096, 15271627549, "ad2809d8"),
        "RWKV-x060-World-14B-v2.1-20240719-ctx4096.pth": ("6", 61, 4096, 28138429796, "b65ad980"),
    }
    assert set(v56) == set(want)
    for file, (arch, n_layer, n_embd, size, sha) in want.items():
        e = v56[file]
        assert (e.arch, e.n_layer, e.n_embd, e.size, e.family) == (arch, n_layer, n_embd, size, "world"), file
        assert len(e.sha256) == 64 and e.sha256.startswith(sha) and "RWKV-Runner" in e.verified, file
        repo = "rwkv-6-world" if arch == "6" else "rwkv-5-world"
        assert e.url == f"https://huggingface.co/BlinkDL/{repo}/resolve/main/{file}", file


def test_rwkv7_entries_cover_every_g1_size_world_and_pile_with_their_sources():
    models = load_catalog().models
    g1 = {e.n_layer * 10_000 + e.n_embd: e for e in models.values() if e.family == "g1"}
    assert sorted((e.n_layer, e.n_embd) for e in g1.values()) == [
        (12, 768), (24, 1024), (24, 2048), (32, 2560), (32, 4096), (61, 4096)]
    for e in g1.values():  # every G1 file is the newest with a public size and sha256
        assert e.arch == "7" and e.tokenizer == "world" and e.size and e.sha256, e.id
        assert e.file.startswith(("rwkv7-g1d-", "rwkv7-g1e-")) and "RWKV-Runner" in e.verified, e.id
    world7 = [e for e in models.values() if e.family == "world7"]
    assert {e.id for e in world7} >= {"world7-0.1b", "world7-0.4b", "world7-1.5b", "world7-2.9b"}
    assert all(e.size and e.sha256 and e.arch == "7" for e in world7)
    pile7 = {e.id: e for e in models.values() if e.family == "pile" and e.arch == "7"}
    assert set(pile7) == {"pile7-168m", "pile7-421m", "pile7-1.47b"}
    assert all(e.vocab == 50304 and e.tokenizer == "20b" for e in pile7.values())
    assert pile7["pile7-168m"].sha256 is None and "unknown" in pile7["pile7-168m"].verified
    assert pile7["pile7-421m"].sha256 and pile7["pile7-1.47b"].sha256


def test_shipped_entries_are_complete_and_consistent():
    for e in load_catalog().models.values():
        assert e.has_shape and e.verified, e.id
        assert e.url.startswith("https://huggingface.co/BlinkDL/") and "/resolve/main/" in e.url
        assert "%" not in e.url.replace("%25", ""), e.url
        assert e.tokenizer == ("world" if e.family in ("world", "world7", "g1") else "20b")
        if e.arch == "4" and e.size:  # bf16 checkpoint: two bytes per parameter, plus a small zip header
            assert 0 <= e.size - 2 * n_params(e) < 1_000_000, e.id
        assert e.runnable == (e.arch in ("4", "5.2", "6", "7"))


def test_the_top_level_models_toml_is_the_shipped_file():
    top = ROOT / "models.toml"
    assert top.resolve() == SHIPPED_PATH.resolve()
    assert tomllib.loads(top.read_text())["family"].keys() >= {"raven", "world", "novel", "pile"}


# --- validation ----------------------------------------------------------------------------------


def test_bad_entries_are_skipped_with_their_line_numbers(tmp_path):
    bad = [
        entry(id="no-family", family="chatty"),
        entry(id="bad-arch", arch="9"),
        entry(id="bare-percent", file="a%b.pth", url="https://example.org/a%b.pth"),
        entry(id="short-sha", sha256="abc"),
        entry(id="neg-layers", n_layer=-2),
        entry(id="Upper Case"),
        entry(id="wrong-file", file="x.pth"),
        entry(id="no-source", url=None),
        entry(id="bad-ram", ram={"q5_1": "lots"}),
        entry(id="bad-format", recommended="iq2_xxs"),
    ]
    text = FAMILIES + "\n" + "\n".join([*bad, GOOD])
    shipped = write(tmp_path / "models.toml", text)
    cat = load_catalog(shipped, tmp_path / "none.toml")
    assert list(cat.models) == ["good"]
    headers = [i for i, line in enumerate(text.splitlines(), 1) if line == "[[model]]"]
    assert len(headers) == len(bad) + 2  # the one inside the multi-line string is not a header…
    assert model_header_lines(text) == headers[1:]  # …and is skipped by the scanner
    lines = headers[1:-1]
    assert len(cat.warnings) == len(bad)
    for warning, line in zip(cat.warnings, lines, strict=True):
        assert warning.startswith(f"{shipped} line {line}: ") and warning.endswith("skipped")
    joined = "\n".join(cat.warnings)
    for needle in ["family 'chatty' is not a [family.*] table", "'arch' must be one of", "bare '%'",
                   "'sha256' must be 64 hexadecimal digits", "'n_layer' must be a positive integer",
                   "id 'Upper Case' must be", "is not the entry's file 'x.pth'", "needs a 'url'",
                   "'ram.q5_1' must be a positive number", "unknown type 'iq2_xxs'"]:
        assert needle in joined


def test_duplicates_unknown_keys_and_broken_toml(tmp_path):
    shipped = write(tmp_path / "models.toml", FAMILIES + GOOD + GOOD.replace('name = "Good"', 'name = "Again"\nx = 1'))
    cat = load_catalog(shipped, tmp_path / "none.toml")
    assert cat.models["good"].name == "Good"
    assert len(cat.warnings) == 1 and "listed twice" in cat.warnings[0]
    write(shipped, FAMILIES + GOOD.replace("n_embd = 64", "n_embd = 64\ncolour = 'red'"))
    cat = load_catalog(shipped, tmp_path / "none.toml")
    assert "good" in cat.models and "unknown keys ignored: colour" in cat.warnings[0]
    user = write(tmp_path / "user.toml", "[[model]]\nid = 'x'\nname = \n")
    cat = load_catalog(shipped, user)
    assert "good" in cat.models
    assert any(w.startswith(f"{user}: not valid TOML") and "line 3" in w for w in cat.warnings)


def test_header_scanner_ignores_strings_and_comments():
    text = textwrap.dedent('''\
        a = "[[model]]"
        b = """
        [[model]]
        """ # [[model]]
        c = \'\'\'x
        [[model]]\'\'\'
          [[ model ]]  # real
        d = 'it''s'
        [[model]]
    ''')
    assert model_header_lines(text) == [7, 9]


# --- the user's registry -------------------------------------------------------------------------


def test_user_file_adds_and_overrides_by_id(tmp_path):
    shipped = write(tmp_path / "models.toml", FAMILIES + GOOD)
    user = write(tmp_path / "user.toml", textwrap.dedent('''\
        # my models
        [[model]]
        id = "good"
        url = "https://mirror.example/x/good.pth"
        recommended = "q8_0"

        [[model]]
        id = "mine"
        name = "Mine"
        family = "world"
        arch = 4
        file = "mine.gguf"
        path = "/models/mine.gguf"

        [[model]]
        id = "broken"
        name = "Broken"
    '''))
    cat = load_catalog(shipped, user)
    good = cat.models["good"]
    assert (good.name, good.url, good.origin, good.recommended) == (
        "Good", "https://mirror.example/x/good.pth", "user override", DType.Q8_0)
    mine = cat.models["mine"]
    assert (mine.arch, mine.tokenizer, mine.vocab, mine.path, mine.origin) == (
        "4", "world", 65536, Path("/models/mine.gguf"), "user")
    assert cat.warnings == [f"{user} line 15: model 'broken': missing 'family'; skipped"]
    assert list(cat.models) == ["good", "mine"]


def test_saving_user_entries_keeps_the_rest_and_validates_first(tmp_path):
    shipped = write(tmp_path / "models.toml", FAMILIES + GOOD)
    text = "# keep this comment\n" + entry(id="one") + "\n# about two\n" + entry(id="two")
    user = write(tmp_path / "user.toml", text)
    weird = 'say "hi"\\ there\nnew line ü'
    save_user_entry({"id": "one", "name": weird, "family": "world", "arch": "4", "file": "o.pth",
                     "url": "https://example.org/o.pth", "ram": {"q5_1": 123}}, user, shipped)
    text = user.read_text()
    assert "# keep this comment" in text and "# about two" in text
    cat = load_catalog(shipped, user)
    assert set(cat.models) == {"good", "one", "two"} and cat.warnings == []
    assert cat.models["one"].name == weird and cat.models["one"].ram == {DType.Q5_1: 123}
    assert text.count('id = "one"') == 1

    before = user.read_text()
    with pytest.raises(RegistryError, match="'n_embd' must be a positive integer"):
        save_user_entry({"id": "three", "name": "T", "family": "raven", "arch": "4", "file": "t.pth",
                         "url": "https://example.org/t.pth", "n_embd": 0}, user, shipped)
    with pytest.raises(RegistryError, match="family 'nope'"):
        save_user_entry({"id": "good", "family": "nope"}, user, shipped)  # an override, checked merged
    assert user.read_text() == before
    save_user_entry({"id": "good", "sha256": "AB" * 32}, user, shipped)
    assert load_catalog(shipped, user).models["good"].sha256 == "ab" * 32

    assert remove_user_entry("two", user) and not remove_user_entry("two", user)
    assert set(load_catalog(shipped, user).models) == {"good", "one"}


def test_unknown_id_suggests_close_matches():
    with pytest.raises(RegistryError, match=re.escape("did you mean raven-7b")):
        load_catalog().get("raven-7")
