"""Starting states in the app: a new chat on a model with registered state-tuned states asks which one
it starts from (none by default), records it, and regenerate, edit, fork and resume keep it; the tab's
status line names it. "Save state" (F7, command palette) exports a conversation's state as a state file
and registers it; "Add state" (a on the models screen, command palette) registers a file for a model.
A state that does not fit gives a notice and the app keeps running."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from runtime.chat.conversation import state_key
from runtime.convert import convert
from runtime.model.state_file import model_architecture, starting_state, time_states_of
from runtime.registry.catalog import save_user_entry
from runtime.registry.states import add_state_for_model, load_states, states_path
from tests.support.synthetic import v7_state_dict
from tests.support.torch_writer import write_pth
from tests.tui.conftest import notes, screen_text, type_text, wait_for
from tests.tui.test_chat import SIZE, reply_to, send
from tui.app import RwkvApp
from tui.screens.dialogs import ChoiceDialog, TextDialog
from tui.widgets.pane import ChatPane

WORLD = 65536
WORLD_FAMILY = """
[family.testworld]
description = "Test chat on the World vocabulary"
mode = "chat"
tokenizer = "world"
init = "A chat.\\n\\n"
user = "User: {message}\\n\\nAssistant:"
separator = "\\n\\n"
stop = ["\\n\\nUser:"]

[family.testworld.sampling]
max_tokens = 6
"""


@pytest.fixture(scope="module")
def v7_files(tmp_path_factory) -> dict[str, Path]:
    """A tiny RWKV-7 model, and a state file that does not fit it (another layer count)."""
    folder = tmp_path_factory.mktemp("tui-v7")
    sd = v7_state_dict(n_layer=2, n_embd=64, head_size=32, n_vocab=WORLD, ranks=(8, 8, 8, 16), seed=5)
    model = convert(write_pth(folder / "tiny-v7.pth", sd, dtype="float32"), folder / "tiny-v7.gguf", "f32").path
    misfit = {f"blocks.{i}.att.time_state": np.zeros((2, 32, 32), np.float32) for i in range(3)}
    return {"model": Path(model), "misfit": write_pth(folder / "three-layers.pth", misfit, dtype="float32")}


@pytest.fixture
def v7(v7_files, tui_home) -> dict[str, Path]:
    """The RWKV-7 model registered as ready (family testworld), and a state file made from it: the state
    after reading a text (what a state-tuned file holds: the WKV matrices)."""
    with open(tui_home["config"] / "models.toml", "a", encoding="utf-8") as f:
        f.write(WORLD_FAMILY)
    save_user_entry({"id": "tiny-v7", "name": "Tiny V7", "family": "testworld", "arch": "7", "n_layer": 2,
                     "n_embd": 64, "vocab": WORLD, "file": v7_files["model"].name, "path": str(v7_files["model"])})
    import runtime

    with runtime.load_model(v7_files["model"], threads=1) as model:
        _, state = model.forward(model.tokenizer.encode("You are a pirate. Arr!"))
        pirate = write_pth(tui_home["data"] / "pirate.pth", time_states_of(state, model_architecture(model)),
                           dtype="float32")
    return {**v7_files, "pirate": Path(pirate)}


async def pick_state(pilot, app: RwkvApp, index: int) -> ChoiceDialog:
    """ctrl+n, then choose option `index` of the state picker (0: no state)."""
    await pilot.press("ctrl+n")
    await wait_for(pilot, lambda: isinstance(app.screen, ChoiceDialog), what="the state picker")
    dialog = app.screen
    await pilot.press(*["down"] * index, "enter")
    return dialog


async def loaded_pane(pilot, app: RwkvApp, count: int = 1) -> ChatPane:
    await wait_for(pilot, lambda: app.chat is not None and len(app.chat.panes) == count, what="a new tab")
    pane = app.chat.active_pane
    await wait_for(pilot, lambda: pane.model is not None and not pane.busy, what="the model to load")
    return pane


def test_a_new_chat_starts_from_the_state_picked_and_keeps_it_through_edit_fork_and_resume(v7):
    add_state_for_model(v7["pirate"], "tiny-v7", v7["model"], name="pirate")
    wanted = ("pirate", str(v7["pirate"]))

    async def first_run() -> int:
        app = RwkvApp()
        async with app.run_test(size=SIZE) as pilot:
            dialog = await pick_state(pilot, app, 1)
            labels = [label for label, _ in dialog.choices]
            assert labels[0].startswith("No state") and labels[1].startswith("pirate")
            pane = await loaded_pane(pilot, app)
            assert "from state pirate" in screen_text(app)  # before the first message too
            await send(pilot, pane, "Hi")
            conv = pane.conversation
            assert conv.start_state == wanted and conv.record.start_state_name == "pirate"
            model = conv.model
            # the init prompt was read from the pirate state, not from zeros
            s0 = starting_state(v7["pirate"], model)
            _, after_init = model.forward(model.tokenizer.encode(conv._fed(0)), s0)
            _, from_zero = model.forward(model.tokenizer.encode(conv._fed(0)))
            key = state_key(model, conv.family)
            messages = conv._messages
            saved = model.state_from_bytes(conv.store.load_state(messages[0].id, key), "init")
            assert np.array_equal(saved.data, after_init.data)
            assert not np.array_equal(saved.data, from_zero.data)
            await reply_to(pilot, pane, "ctrl+r")  # regenerate
            assert pane.conversation.start_state == wanted
            # edit the message: read again from the state after the init prompt (itself from pirate)
            await pilot.press("ctrl+l")
            await wait_for(pilot, lambda: isinstance(app.screen, TextDialog), what="the edit dialog")
            await type_text(pilot, " there")
            await reply_to(pilot, pane, "ctrl+s")
            conv = pane.conversation
            assert conv.messages[0].content == "Hi there"
            _, after_edit = model.forward(model.tokenizer.encode(conv._fed(1)), after_init)
            user = conv._messages[1]
            assert np.array_equal(model.state_from_bytes(conv.store.load_state(user.id, key), "user").data,
                                  after_edit.data)
            await pilot.press("f8")  # fork
            fork = await loaded_pane(pilot, app, 2)
            await wait_for(pilot, lambda: fork.conversation is not None, what="the fork")
            assert fork.conversation.start_state == wanted and "from state pirate" in screen_text(app)
            assert not [n for n in notes(app) if "rror" in n]
            cid = conv.id
        return cid

    cid = asyncio.run(first_run())

    async def second_run() -> None:
        app = RwkvApp()
        async with app.run_test(size=SIZE) as pilot:  # the tabs come back; nothing is read again
            await wait_for(pilot, lambda: app.chat is not None and len(app.chat.panes) == 2, what="the tabs")
            pane = next(p for p in app.chat.panes if p.conversation_id == cid)
            app.chat.tabs.active = pane.id
            await wait_for(pilot, lambda: pane.conversation is not None and not pane.busy, what="the resume")
            assert pane.conversation.start_state == wanted and pane.conversation.tokens_read == 0
            await pilot.pause()
            assert "from state pirate" in screen_text(app)

    asyncio.run(second_run())


def test_no_state_is_the_first_choice_and_esc_opens_no_tab(v7):
    add_state_for_model(v7["pirate"], "tiny-v7", v7["model"], name="pirate")

    async def body() -> None:
        app = RwkvApp()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("ctrl+n")
            await wait_for(pilot, lambda: isinstance(app.screen, ChoiceDialog), what="the state picker")
            await pilot.press("escape")
            await pilot.pause()
            assert not app.chat.panes
            await pick_state(pilot, app, 0)
            pane = await loaded_pane(pilot, app)
            assert pane.pending_start_state is None and "from state" not in screen_text(app)
            await send(pilot, pane, "Hi")
            assert pane.conversation.start_state is None and pane.conversation.record.start_state_path == ""

    asyncio.run(body())


def test_a_state_whose_file_no_longer_fits_gives_a_notice_and_the_chat_starts_from_none(v7, tui_home):
    copy = tui_home["data"] / "changed.pth"
    copy.write_bytes(v7["pirate"].read_bytes())
    add_state_for_model(copy, "tiny-v7", v7["model"], name="changed")
    copy.write_bytes(v7["misfit"].read_bytes())  # replaced since it was registered

    async def body() -> None:
        app = RwkvApp()
        async with app.run_test(size=SIZE) as pilot:
            await pick_state(pilot, app, 1)
            pane = await loaded_pane(pilot, app)
            await wait_for(pilot, lambda: any("changed" in n and "no state" in n for n in notes(app)),
                           what="the notice")
            assert pane.pending_start_state is None and "from state" not in screen_text(app)
            await send(pilot, pane, "Hi")  # the app keeps running; the chat starts from zeros
            assert pane.conversation.start_state is None

    asyncio.run(body())


def test_save_state_exports_the_conversation_state_and_new_chats_can_start_from_it(v7):
    async def body() -> None:
        app = RwkvApp()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("ctrl+n")  # no state registered yet: no picker
            pane = await loaded_pane(pilot, app)
            await send(pilot, pane, "You are a pirate.")
            await pilot.press("f7")
            await wait_for(pilot, lambda: isinstance(app.screen, TextDialog), what="the name dialog")
            await type_text(pilot, "persona")
            await pilot.press("enter")
            await wait_for(pilot, lambda: any(n.startswith("State saved") for n in notes(app)), what="the notice")
            entry = next(e for e in load_states() if e.name == "persona")
            assert entry.model == "tiny-v7" and f"to {entry.path}." in notes(app)[-1]
            path = Path(entry.path)
            assert path.is_file()
            # the file holds the conversation's state (its WKV matrices)
            s = starting_state(path, pane.model)
            rows = pane.conversation.state.data.reshape(2, -1, 64)
            assert np.array_equal(s.data.reshape(2, -1, 64)[:, 2:], rows[:, 2:])
            await pilot.press("f7")  # the same name again: a notice, nothing overwritten
            await wait_for(pilot, lambda: isinstance(app.screen, TextDialog), what="the name dialog")
            await type_text(pilot, "persona")
            await pilot.press("enter")
            await wait_for(pilot, lambda: any("already has a state called 'persona'" in n for n in notes(app)),
                           what="the refusal")
            dialog = await pick_state(pilot, app, 1)
            assert [label.split()[0] for label, _ in dialog.choices] == ["No", "persona"]
            new = await loaded_pane(pilot, app, 2)
            assert new.pending_start_state == ("persona", str(path))

    asyncio.run(body())


def test_save_state_on_a_model_without_states_is_refused_with_a_notice(models):
    async def body() -> None:
        app = RwkvApp(model="tiny-a")  # RWKV-4: no state-tuned states
        async with app.run_test(size=SIZE) as pilot:
            pane = await loaded_pane(pilot, app)
            await send(pilot, pane, "Hello")
            await pilot.press("f7")
            await wait_for(pilot, lambda: isinstance(app.screen, TextDialog), what="the name dialog")
            await type_text(pilot, "mine")
            await pilot.press("enter")
            await wait_for(pilot, lambda: any("Cannot save the state" in n and "RWKV-4" in n for n in notes(app)),
                           what="the refusal")
            assert load_states() == [] and not pane.busy
            await send(pilot, pane, "Again")  # still running
            assert len(pane.conversation.messages) == 4

    asyncio.run(body())


def test_add_state_on_the_models_screen_registers_a_file_that_fits_and_refuses_one_that_does_not(v7):
    async def add(pilot, app: RwkvApp, file: Path) -> None:
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, TextDialog), what="the file dialog")
        await type_text(pilot, str(file))
        await pilot.press("enter")
        await pilot.pause()

    async def body() -> None:
        app = RwkvApp(show_welcome=False)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("f2")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "ModelsScreen", what="the models screen")
            screen = app.screen
            await wait_for(pilot, lambda: screen._selected() is not None, what="the list")
            while screen._selected().entry.id != "tiny-v7":
                await pilot.press("down")
            await add(pilot, app, v7["misfit"])
            await wait_for(pilot, lambda: any(n.startswith("Cannot add the state") for n in notes(app)),
                           what="the refusal")
            assert "3 layers" in notes(app)[-1] and not states_path().exists()
            await add(pilot, app, v7["pirate"])
            await wait_for(pilot, lambda: any(n.startswith("State added") for n in notes(app)), what="the notice")
            assert str(states_path()) in notes(app)[-1] and str(v7["pirate"]) in notes(app)[-1]
            assert [(e.name, e.model) for e in load_states()] == [("pirate", "tiny-v7")]
            await add(pilot, app, v7["pirate"])  # the name is taken: asked for another
            await wait_for(pilot, lambda: isinstance(app.screen, TextDialog) and "already has" in
                           app.screen.title_text, what="the name dialog")
            await pilot.press("enter")  # the proposed name
            await wait_for(pilot, lambda: len(load_states()) == 2, what="the second entry")
            assert load_states()[1].name == "pirate-2"

    asyncio.run(body())


def test_the_command_palette_offers_save_state_and_add_state_for_the_tab_model(v7):
    async def body() -> None:
        app = RwkvApp()
        async with app.run_test(size=SIZE) as pilot:
            titles = [c.title for c in app.get_system_commands(app.screen)]
            assert "Add a state file…" in titles and "Save state…" not in titles  # no tab yet
            await pilot.press("ctrl+n")
            await loaded_pane(pilot, app)
            commands = {c.title: c for c in app.get_system_commands(app.screen)}
            assert "Save state…" in commands and "f7" in commands["Save state…"].help
            await pilot.press("ctrl+p")
            await type_text(pilot, "add a state file")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, TextDialog), what="the file dialog")
            assert "tiny-v7" in app.screen.title_text  # the tab's model, not a list to choose from
            await type_text(pilot, str(v7["pirate"]))
            await pilot.press("enter")
            await wait_for(pilot, lambda: [e.name for e in load_states()] == ["pirate"], what="the entry")

    asyncio.run(body())


def test_the_picker_lists_states_registered_by_the_model_file_path_as_well_as_by_its_id(v7):
    from runtime.registry.states import states_for_file

    add_state_for_model(v7["pirate"], str(v7["model"]), v7["model"], name="by-path")  # add-state --model FILE
    add_state_for_model(v7["pirate"], "tiny-v7", v7["model"], name="by-id")
    add_state_for_model(v7["pirate"], "other-model", v7["model"], name="elsewhere")
    assert [e.name for e in states_for_file("tiny-v7", v7["model"])] == ["by-path", "by-id"]
