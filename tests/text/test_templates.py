"""Families from models.toml: the shipped ones, validation of bad tables, and user overrides."""

from __future__ import annotations

import re

from runtime.text.templates import clean_message, fold_blank_lines, get_family, guess_family, read_families


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


def test_guess_family_of_rwkv7_files():
    for name in ("rwkv7-g1e-1.5b-20260309-ctx8192.pth", "rwkv7-g1e-1.5b-Q8_0.gguf", "RWKV7-G1l-2.9B-GGUF.gguf",
                 "rwkv7-0.1B-g1-F16.gguf", "rwkv7-g0a2-7.2b-20251005-ctx4096.pth", "rwkv7-g1a3-1.5b.gguf"):
        assert guess_family(name, "rwkv-world") == "g1", name
    assert guess_family("RWKV-x070-World-1.5B-v3-20250127-ctx4096.pth", "rwkv-world") == "world7"
    assert guess_family("rwkv7-1.5B-world.gguf", "rwkv-world") == "world7"
    assert guess_family("RWKV-4-World-3B-v1-20230619-ctx4096.pth", "rwkv-world") == "world"
    assert guess_family("RWKV-x070-Pile-421M-20241127-ctx4096.pth", "gpt-neox-20b") == "pile"
    assert guess_family("rwkv-4-pile-1g1b.pth", "gpt-neox-20b") == "pile"  # no "g1" word in it
    assert guess_family("rwkv7-g1e-1.5b.gguf", "rwkv-world", families=["world", "raven"]) == "world"


G1 = get_family("g1")


def test_g1_template_is_the_official_one_with_both_think_endings():
    assert G1.thinks and not get_family("world").thinks and G1.init == ""
    # messages cleaned as RWKV7-G1x-templates.txt says: re.sub(r'\n{2,}', '\n', t.replace('\r\n','\n')).strip()
    messy = " \r\nline one\r\n\r\n\r\nline two\n\n \n"
    official = re.sub(r"\n{2,}", "\n", messy.replace("\r\n", "\n")).strip()
    assert clean_message(messy) == official == "line one\nline two"
    assert G1.user_turn(messy, think=True) == f"User: {official}\n\nAssistant: <think"
    assert G1.user_turn("hi", think=False) == "User: hi\n\nAssistant: <think>\n</think"
    assert G1.user_turn("hi") == "User: hi\n\nAssistant:"  # a turn written without the markup (another family)
    assert G1.init_text("Be brief.\n\n\nAlways.") == "System: Be brief.\nAlways.\n\n"
    assert G1.init_text("") == "" and get_family("raven").init_text("ignored") == get_family("raven").init
    assert G1.fed_text("user", "next", True, False, think=True) == "\n\nUser: next\n\nAssistant: <think"


def test_g1_sampling_defaults_are_the_official_chat_demo():
    s = G1.sampling
    assert (s.temperature, s.top_p, s.presence_penalty, s.frequency_penalty, s.penalty_decay) == (
        1.0, 0.3, 0.5, 0.5, 0.996)


def test_a_reply_splits_into_thinking_and_answer_by_how_its_prompt_ended():
    assert G1.split_reply(">\nLet me see.\n</think>\nFour.", True) == ("\nLet me see.\n", "\nFour.")
    assert G1.split_reply(">\nStill thinking", True) == ("\nStill thinking", "")
    assert G1.split_reply(">\nFour.", False) == (None, "\nFour.")
    assert G1.split_reply(" Four.", None) == (None, " Four.")
    # a family without thinking keeps the parts of a reply G1 wrote, and reads its answer only
    world = get_family("world")
    assert world.split_reply(">\nhm</think>\nFour.", True) == ("\nhm", "\nFour.")
    assert world.fed_text("assistant", ">\nhm</think>\nFour.", True, True, think=True) == " Four.\n\n"
    assert world.fed_text("user", "q", True, True, think=True) == "User: q\n\nAssistant:"
    assert G1.fed_text("assistant", ">\nhm</think>\nFour.", True, True, think=True) == ">\nhm</think>\nFour.\n\n"


def test_the_answer_starts_after_the_think_block_and_its_whitespace():
    assert G1.answer_start(">\nthinking\n\nmore", True) is None  # "\n\n" inside the block is reasoning
    text = ">\nthinking</think>\n\nAnswer"
    assert G1.answer_start(text, True) == text.index("Answer")
    assert G1.answer_start(">\nthinking</think>\n", True) == len(">\nthinking</think>\n")
    assert G1.answer_start("", False) is None  # the ">" closing the prompt's block may still come
    assert G1.answer_start(">\n\nHi", False) == 3
    assert G1.answer_start("Hi", False) == 0  # the model did not close the tag: all of it is the answer
    assert get_family("raven").answer_start("\n\nBob:", None) == 0
    assert G1.answer_start("\n\nUser:", None) == 0


def test_think_keys_go_together_and_need_chat_mode(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text(
        '[family.half]\nthink_on = " <think"\n'
        '[family.novelthink]\nmode = "novel"\nthink_on = "a"\nthink_off = "b"\nthink_close = "c"\n'
        '[family.badsystem]\nsystem = "System:"\n'
    )
    families, warnings = read_families([path])
    assert families == {}
    text = "\n".join(warnings)
    assert "all three or none" in text and "needs mode" in text and "system must contain" in text
