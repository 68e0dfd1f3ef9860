"""Keeping the focus in the conversation tab that is showing.

Textual blurs a focused widget when it receives a Hide event and gives the focus to a sibling; a
sibling inside a conversation tab then makes its tab the active one again. Hide events arrive after
the layout that hid the widget, so a tab that was hidden for a moment while tabs opened at start
(restored tabs, then `--model`) blurred its prompt after it had been shown again, and the focus
landed in the message list, whose single-letter keys then took what the user typed.

Widgets that can hold the focus inside a tab call `keep_focus_in_active_tab` first in their
`_on_hide`: a stale Hide (the widget is showing again) keeps the focus where it is, and a real one
hands it to the prompt of the tab that is showing (`ChatScreen.focus_active_prompt`).
"""

from __future__ import annotations

from textual import events
from textual.dom import NoScreen
from textual.widget import Widget


def keep_focus_in_active_tab(widget: Widget, event: events.Hide) -> bool:
    """Handle the focus of `widget` as it is hidden; True if Textual's blur must not run."""
    try:
        screen = widget.screen
    except NoScreen:  # being removed
        return False
    if screen.focused is not widget:
        return False
    if widget in screen.focus_chain:  # shown again since the layout that hid it: keep the focus
        event.prevent_default()
        return True
    focus_active_prompt = getattr(screen, "focus_active_prompt", None)
    if focus_active_prompt is not None:
        focus_active_prompt(now=True)  # the focus has moved on, so Textual's blur does nothing
    return False
