"""`parse_keymap`, directly: what a keymap.toml may say and every way it can be wrong."""

from __future__ import annotations

import pytest

from tui.keymap import KEYS, effective_keys, parse_keymap


def test_string_and_list_values_are_normalised():
    keymap, warnings = parse_keymap({"keys": {
        "pane.regenerate": "ctrl+r",
        "pane.new_chat": " shift+enter , ctrl+j ",
        "app.models": ["f2", " ctrl+m"],
    }}, "k.toml")
    assert keymap == {"pane.regenerate": "ctrl+r", "pane.new_chat": "shift+enter,ctrl+j", "app.models": "f2,ctrl+m"}
    assert warnings == []


def test_an_empty_file_changes_nothing():
    assert parse_keymap({}, "k.toml") == ({}, [])
    assert parse_keymap({"keys": {}}, "k.toml") == ({}, [])


@pytest.mark.parametrize("value", ["", "   ", "f5,", ",f5", "f5,,ctrl+t", "f5, ,ctrl+t", [], ["f5", ""], 5, True,
                                   {"key": "f5"}])
def test_malformed_values_are_skipped_with_a_warning(value):
    keymap, warnings = parse_keymap({"keys": {"pane.regenerate": value, "app.help": "f10"}}, "k.toml")
    assert keymap == {"app.help": "f10"}  # the good entry beside it still counts
    assert warnings == ['k.toml: pane.regenerate must be a key name like "ctrl+r" or "f5,ctrl+t"']


def test_unknown_ids_and_sections_are_named():
    keymap, warnings = parse_keymap({"keys": {"pane.nonsense": "f5"}, "colors": {}, "extra": 1}, "k.toml")
    assert keymap == {}
    assert warnings == [
        "k.toml: ignoring unknown sections colors, extra",
        "k.toml: unknown binding id 'pane.nonsense' (see the help screen, F1, for ids)",
    ]


@pytest.mark.parametrize("keys", ["ctrl+r", ["ctrl+r"], 3])
def test_keys_that_are_not_a_table_are_refused_whole(keys):
    warning = 'k.toml: [keys] must be a table of "binding.id" = "key,key"'
    assert parse_keymap({"keys": keys}, "k.toml") == ({}, [warning])


def test_effective_keys_fall_back_to_the_defaults():
    assert effective_keys("app.help", {"app.help": "f10"}) == "f10"
    assert effective_keys("app.help", {}) == KEYS["app.help"].keys == "f1"
