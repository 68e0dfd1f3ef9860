"""A new user's first model in the app: `--model` on a plain rwkv4-… file opens a chat (the family is
guessed as `add` and `chat` guess it); a model that only continues text opens a novel tab, from
`--model` and from "new chat", and the user is told why; the models screen lists the user's own files
first, with their size and type."""

from __future__ import annotations

import asyncio

from runtime.registry.catalog import load_catalog
from runtime.text.templates import guess_family
from tests.tui.conftest import notes, register, wait_for
from tests.tui.test_chat import SIZE, open_chat
from tui.app import RwkvApp


def test_model_path_of_a_plain_rwkv4_file_opens_a_chat(model_files, tui_home):
    own = tui_home["data"].parent / "rwkv4-tiny.gguf"
    own.write_bytes(model_files["tiny-a"].read_bytes())

    async def body():
        app = RwkvApp(model=str(own))
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            entry = next(e for e in load_catalog().models.values() if e.path == own.resolve())
            assert entry.family == guess_family(own.name, pane.model.tokenizer_name) == "raven"
            assert pane.mode == "chat" and pane.family_name == "raven"
            assert not [n for n in notes(app) if "only continues text" in n]

    asyncio.run(body())


def test_model_that_only_continues_text_opens_a_novel_tab_and_says_why(model_files, tui_home):
    register("tiny-base", model_files["tiny-b"], family="testnovel", name="Tiny base")

    async def body():
        app = RwkvApp(model="tiny-base")
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            assert pane.mode == "novel"
            assert [n for n in notes(app) if "Tiny base only continues text" in n]

    asyncio.run(body())


def test_a_new_chat_with_only_a_text_continuing_model_opens_a_novel_tab_and_says_why(model_files, tui_home):
    register("tiny-base", model_files["tiny-b"], family="testnovel", name="Tiny base")

    async def body():
        app = RwkvApp()
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.chat is not None, what="the main screen")
            await app.new_conversation("chat")
            pane = await open_chat(pilot, app)
            assert pane.mode == "novel" and pane.family_name == "testnovel"
            assert [n for n in notes(app) if "Tiny base only continues text" in n]

    asyncio.run(body())


def test_the_models_screen_lists_own_files_first_with_their_size_and_type(model_files, tui_home):
    from tests.tui.test_models_jobs import select_model
    from tui.units import human_bytes

    register("tiny-a", model_files["tiny-a"])  # an F32 file of the user's (Q8_0 would be recommended)

    async def body():
        app = RwkvApp()
        async with app.run_test(size=(150, 40)) as pilot:
            screen = await select_model(pilot, app, "tiny-a")
            table = screen.query_one("#models-table")
            labels = [str(c.label) for c in table.columns.values()]
            first = dict(zip(labels, table.get_row_at(0), strict=True))
            assert str(first["id"]).startswith("tiny-a")
            assert first["on disk"] == human_bytes(model_files["tiny-a"].stat().st_size)
            assert first["use"] == "F32"

    asyncio.run(body())
