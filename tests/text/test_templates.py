"""Families from models.toml: the shipped ones, validation of bad tables, and user overrides."""

from __future__ import annotations

from runtime.text.templates import fold_blank_lines, get_family, guess_family, read_families


def test_shipped_families_have_their_templates():
    raven = get_family("raven")
    assert raven.mode == "chat"
    assert raven.user_turn("Hello\n\n\nthere  ") == "Bob: Hello\nthere\n\nAlice:"
    assert raven.stop == ("\n\nBob:", "\n\nAlice:")
    assert get_family("world").user_turn("你好") == "User: 你好\n\nAssistant:"
    novel = get_family("novel")
    assert novel.mode == "novel" and novel.user_turn("Once\n\nupon") == "Once\n\nupon"  # novels keep blank lines
    assert 0 < raven.sampling.top_p <= 1


def test_fed_text_adds_the_separator_only_after_complete_replies():
    raven = get_family("raven")
    assert raven.fed_text("assistant", " Hi.", True, True) == " Hi.\n\n"
    assert raven.fed_text("assistant", " Hi", False, True) == " Hi"
    assert raven.fed_text("user", "next", True, previous_complete=False) == "\n\nBob: next\n\nAlice:"
    assert raven.fed_text("user", "next", True, previous_complete=True) == "Bob: next\n\nAlice:"


def test_fold_blank_lines():
    assert fold_blank_lines("a\r\n\r\nb\n\n\n\nc\nd") == "a\nb\nc\nd"


def test_bad_families_are_skipped_with_a_warning_and_the_user_file_overrides(tmp_path):
    shipped = tmp_path / "models.toml"
    shipped.write_text(
        '[family.good]\nmode = "chat"\nuser = "Q: {message}\\nA:"\n'
        '[family.nomessage]\nuser = "Q:"\n'
        '[family.badmode]\nmode = "poem"\n'
        '[family.badsampling]\n[family.badsampling.sampling]\ntemperature = -1\n'
    )
    user = tmp_path / "user.toml"
    user.write_text('[family.good]\nmode = "novel"\n')
    broken = tmp_path / "broken.toml"
    broken.write_text("[family.x\n")
    families, warnings = read_families([shipped, user, broken, tmp_path / "missing.toml"])
    assert set(families) == {"good"}
    assert families["good"].mode == "novel"  # the user's table wins
    text = "\n".join(warnings)
    for name in ("nomessage", "badmode", "badsampling", "broken.toml"):
        assert name in text


def test_guess_family_from_file_names():
    assert guess_family("RWKV-4-Novel-7B-v1-ChnEng.pth", "gpt-neox-20b") == "novel"
    assert guess_family("my-model.gguf", "rwkv-world") == "world"
    assert guess_family("RWKV-4-Raven-3B.gguf", "gpt-neox-20b") == "raven"
    assert guess_family("something.gguf", "gpt-neox-20b") == "raven"
