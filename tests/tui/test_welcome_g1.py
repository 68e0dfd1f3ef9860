"""The welcome screen names the G1 model that fits this machine's memory, once the runtime runs RWKV-7."""

from __future__ import annotations

import asyncio

from runtime.registry import catalog as catalog_module
from runtime.registry import recommend
from runtime.registry.catalog import load_catalog
from tests.tui.conftest import screen_text, wait_for
from tui.app import RwkvApp
from tui.screens.welcome import WelcomeScreen

SIZE = (110, 36)


def _welcome_text() -> str:
    async def body() -> str:
        app = RwkvApp()
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, WelcomeScreen), what="the welcome screen")
            return " ".join(screen_text(app).replace("█", " ").split())  # the box's edges out

    return asyncio.run(body())


def test_the_welcome_screen_recommends_the_g1_model_that_fits(tui_home, monkeypatch):
    monkeypatch.setattr(recommend, "machine_resources", lambda folder: (3 << 30, 500 << 30))
    monkeypatch.setattr(catalog_module, "RUNNABLE_VERSIONS", ("4", "7"))
    starter = recommend.starter_model(load_catalog().models.values(), free_ram=3 << 30)
    text = _welcome_text()
    assert f"start with {starter.entry.name} ({starter.entry.id}, {starter.choice.name}" in text
    assert "Raven is the chat model" not in text


def test_without_a_runnable_g1_that_fits_it_gives_the_raven_advice(tui_home, monkeypatch):
    monkeypatch.setattr(recommend, "machine_resources", lambda folder: (64 << 20, 500 << 30))
    monkeypatch.setattr(catalog_module, "RUNNABLE_VERSIONS", ("4", "7"))
    assert "Raven is the chat model" in _welcome_text()


def test_the_models_screen_lists_the_recommended_g1_first(tui_home, monkeypatch):
    from textual.widgets import DataTable

    from tui.screens.models import ModelsScreen

    monkeypatch.setattr(recommend, "machine_resources", lambda folder: (3 << 30, 500 << 30))
    monkeypatch.setattr(catalog_module, "RUNNABLE_VERSIONS", ("4", "7"))
    starter = recommend.starter_model(load_catalog().models.values(), free_ram=3 << 30)

    async def body() -> None:
        app = RwkvApp(show_welcome=False)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.chat is not None, what="the main screen")
            await pilot.press("f2")
            await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen), what="the models screen")
            table = app.screen.query_one(DataTable)
            assert table.coordinate_to_cell_key((0, 0)).row_key.value == starter.entry.id
            assert f"recommended here: {starter.entry.id}" in screen_text(app)

    asyncio.run(body())
