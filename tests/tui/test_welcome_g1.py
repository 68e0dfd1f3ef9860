"""The welcome screen names the G1 model that fits this machine's memory and answers at a readable speed
on it (measured in a thread while the screen says it is checking), once the runtime runs RWKV-7."""

from __future__ import annotations

import asyncio
import threading

from runtime.registry import catalog as catalog_module
from runtime.registry import machine_speed, recommend
from runtime.registry.catalog import load_catalog
from tests.conftest import PINNED_READ_GBS
from tests.tui.conftest import screen_text, wait_for
from tui.app import RwkvApp
from tui.screens.welcome import WelcomeScreen

SIZE = (110, 36)


def _flat(app) -> str:
    return " ".join(screen_text(app).replace("█", " ").split())  # the box's edges out


def _welcome_text() -> str:
    async def body() -> str:
        app = RwkvApp()
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, WelcomeScreen) and not app.screen.finding,
                           what="the welcome screen's suggestion")
            await wait_for(pilot, lambda: "Checking this machine" not in (text := _flat(app))
                           and "Choose a model from" in text, what="the suggestion shown")
            return _flat(app)

    return asyncio.run(body())


def test_the_welcome_screen_recommends_the_g1_model_that_fits(tui_home, monkeypatch):
    monkeypatch.setattr(recommend, "machine_resources", lambda folder: (3 << 30, 500 << 30))
    monkeypatch.setattr(catalog_module, "RUNNABLE_VERSIONS", ("4", "7"))
    starter = recommend.starter_model(load_catalog().models.values(), free_ram=3 << 30, read_gbs=PINNED_READ_GBS)
    rate = recommend.decode_rate(starter.entry, starter.choice, PINNED_READ_GBS)
    text = _welcome_text()
    assert f"start with {starter.entry.name} ({starter.entry.id}, {starter.choice.name}" in text
    assert f"answering at about {rate:.0f} tokens a second" in text
    assert "Raven is the chat model" not in text


def test_a_slow_machine_is_suggested_a_smaller_model_and_the_screen_says_it_is_checking_meanwhile(
        tui_home, tmp_path, monkeypatch):
    """Memory alone would suggest the largest G1 (64 GiB free); at 20 GB/s it is one that answers at a
    readable speed. While the read is measured (here: until the test lets it finish) the screen says so."""
    monkeypatch.setenv("RWKV_TUI_CACHE_DIR", str(tmp_path / "cache"))  # no figure kept yet: it is measured
    monkeypatch.setattr(recommend, "machine_resources", lambda folder: (64 << 30, 500 << 30))
    monkeypatch.setattr(catalog_module, "RUNNABLE_VERSIONS", ("4", "7"))
    entries = load_catalog().models.values()
    slow = recommend.starter_model(entries, free_ram=64 << 30, read_gbs=20.0)
    assert slow.entry.id != recommend.starter_model(entries, free_ram=64 << 30).entry.id == "g1-13.3b"
    release = threading.Event()

    def measure() -> float:
        release.wait(60)
        return 20.0

    monkeypatch.setattr(machine_speed, "measure_read_gbs", measure)

    async def body() -> None:
        app = RwkvApp()
        try:
            async with app.run_test(size=SIZE) as pilot:
                await wait_for(pilot, lambda: isinstance(app.screen, WelcomeScreen), what="the welcome screen")
                assert "Checking this machine's memory and speed" in _flat(app)
                assert app.screen.query_one("#models").has_focus  # the buttons work meanwhile
                release.set()
                await wait_for(pilot, lambda: f"start with {slow.entry.name} ({slow.entry.id}" in _flat(app),
                               what="the suggestion for a slow machine")
                assert "Checking this machine" not in _flat(app)
        finally:
            release.set()  # a failed check must not leave the measuring thread waiting

    asyncio.run(body())


def test_without_a_runnable_g1_that_fits_it_gives_the_raven_advice(tui_home, monkeypatch):
    monkeypatch.setattr(recommend, "machine_resources", lambda folder: (64 << 20, 500 << 30))
    monkeypatch.setattr(catalog_module, "RUNNABLE_VERSIONS", ("4", "7"))
    assert "Raven is the chat model" in _welcome_text()


def test_the_models_screen_lists_the_recommended_g1_first(tui_home, tmp_path, monkeypatch):
    """With 64 GiB free, memory alone would put G1 13.3B first; the kept read of a slow machine (20 GB/s)
    puts the G1 that answers readably there first; with no figure kept the screen measures one itself."""
    from textual.widgets import DataTable

    from tui.screens.models import ModelsScreen

    monkeypatch.setenv("RWKV_TUI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(recommend, "machine_resources", lambda folder: (64 << 30, 500 << 30))
    monkeypatch.setattr(catalog_module, "RUNNABLE_VERSIONS", ("4", "7"))
    entries = load_catalog().models.values()
    slow = recommend.starter_model(entries, free_ram=64 << 30, read_gbs=20.0)
    fast = recommend.starter_model(entries, free_ram=64 << 30, read_gbs=PINNED_READ_GBS)
    assert len({slow.entry.id, fast.entry.id, recommend.starter_model(entries, free_ram=64 << 30).entry.id}) == 3

    async def first_row(app) -> str:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.chat is not None, what="the main screen")
            await pilot.press("f2")
            await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen), what="the models screen")
            await wait_for(pilot, lambda: "recommended here" in screen_text(app), what="a suggestion")
            table = app.screen.query_one(DataTable)
            first = table.coordinate_to_cell_key((0, 0)).row_key.value
            assert f"recommended here: {first}" in screen_text(app)
            return first

    monkeypatch.setattr(machine_speed, "measure_read_gbs", lambda: 20.0)
    machine_speed.memory_read_gbs()  # kept, as the welcome screen or `rwkv-tui models` leaves it
    monkeypatch.setattr(machine_speed, "measure_read_gbs", lambda: PINNED_READ_GBS)  # not measured again
    assert asyncio.run(first_row(RwkvApp(show_welcome=False))) == slow.entry.id
    (tmp_path / "cache" / machine_speed.CACHE_NAME).unlink()  # nothing kept: the screen measures (40 GB/s)
    monkeypatch.setattr(machine_speed, "_measured", None)  # as in a new process

    async def measured(app) -> str:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.chat is not None, what="the main screen")
            await pilot.press("f2")
            await wait_for(pilot, lambda: f"recommended here: {fast.entry.id}" in screen_text(app),
                           what="the suggestion once measured")
            return app.screen.query_one(DataTable).coordinate_to_cell_key((0, 0)).row_key.value

    assert asyncio.run(measured(RwkvApp(show_welcome=False))) == fast.entry.id
