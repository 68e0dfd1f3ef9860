"""Every key binding of the app in one table, with ids users can remap in `keymap.toml`.

Widgets build their `BINDINGS` from this table (`bindings("pane.regenerate", ...)`), the help screen
and the command palette read it, and `load_keymap` reads the user's overrides:

    # ~/.config/rwkv-tui/keymap.toml
    [keys]
    "pane.regenerate" = "ctrl+r"
    "pane.newline" = "shift+enter,ctrl+j"

Unknown ids and malformed values are reported as warnings and skipped; the app keeps running.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from textual.binding import Binding

KEYMAP_FILE = "keymap.toml"


@dataclass(frozen=True)
class Key:
    id: str
    keys: str  # Textual key names, comma separated
    action: str
    description: str
    context: str  # where it works: "everywhere", "chat", "prompt", "messages", "sidebar", "models", "jobs"
    show: bool = True  # in the footer
    priority: bool = False
    display: str | None = None
    long: str = ""  # for the help screen, when the footer's description is too terse

    @property
    def help(self) -> str:
        return self.long or self.description


_TABLE: tuple[Key, ...] = (
    # anywhere in the app
    Key("app.quit", "ctrl+q", "quit", "Quit", "everywhere"),
    Key("app.help", "f1", "help", "Help", "everywhere"),
    Key("app.models", "f2", "models", "Models", "everywhere"),
    Key("app.jobs", "f3", "jobs", "Jobs", "everywhere"),
    Key("app.palette", "ctrl+p", "command_palette", "Commands", "everywhere", show=False),
    # the chat screen, acting on the open conversation
    Key("pane.stop", "escape", "stop", "Stop", "chat", priority=True, display="esc"),
    Key("pane.new_chat", "ctrl+n", "new_chat", "Chat", "chat", long="New chat"),
    Key("pane.new_novel", "ctrl+t", "new_novel", "Novel", "chat", long="New novel"),
    Key("pane.regenerate", "ctrl+r", "regenerate", "Regen", "chat", long="Regenerate the last reply"),
    Key("pane.continue", "ctrl+g", "continue_reply", "More", "chat",
        long="Write more (novel) / continue a cut reply"),
    Key("pane.edit_last", "ctrl+l", "edit_last", "Edit last", "chat", show=False, long="Edit your last message"),
    Key("pane.switch_model", "f4", "switch_model", "Model", "chat", long="Switch the model of this tab"),
    Key("pane.sampling", "f5", "sampling", "Sampling", "chat", long="Sampling settings"),
    Key("pane.think", "f6", "think", "Think", "chat", show=False, priority=True,  # before the prompt's own f6
        long="Thinking on/off (G1 models)"),
    Key("pane.fork", "f8", "fork", "Fork", "chat", show=False, long="Fork the conversation into a new tab"),
    Key("pane.save_state", "f7", "save_state", "Save state", "chat", show=False, priority=True,  # the prompt's f7
        long="Save the conversation's state as a starting state for its model (a state-tuning .pth)"),
    Key("pane.export", "ctrl+s", "export", "Export", "chat", show=False, long="Export to Markdown"),
    Key("pane.copy_reply", "alt+c", "copy_reply", "Copy reply", "chat", show=False),
    Key("pane.messages", "alt+up", "focus_messages", "Messages", "chat", show=False,
        long="Select a message (then e edit, c copy, y copy code, f fork)"),
    Key("pane.close", "ctrl+w", "close_tab", "Close tab", "chat", show=False),
    Key("pane.next_tab", "ctrl+pagedown,alt+right", "next_tab", "Next tab", "chat", show=False),
    Key("pane.prev_tab", "ctrl+pageup,alt+left", "prev_tab", "Previous tab", "chat", show=False),
    Key("pane.sidebar", "f9", "toggle_sidebar", "Sidebar", "chat", show=False),
    Key("pane.search", "ctrl+f", "search", "Search", "chat", show=False, long="Search all conversations"),
    # the prompt
    Key("prompt.send", "enter", "send", "Send", "prompt", show=False, long="Send the message"),
    Key("prompt.newline", "shift+enter,alt+enter,ctrl+j", "newline", "Newline", "prompt", show=False,
        long="New line in the message"),
    Key("prompt.editor", "ctrl+o", "editor", "$EDITOR", "prompt", show=False,
        long="Write the message in $EDITOR"),
    # a selected message (alt+up or a click on a message)
    Key("messages.up", "up,k", "move(-1)", "Previous message", "messages", show=False),
    Key("messages.down", "down,j", "move(1)", "Next message", "messages", show=False),
    Key("messages.edit", "e,enter", "edit", "Edit", "messages"),
    Key("messages.copy", "c", "copy", "Copy", "messages"),
    Key("messages.copy_code", "y", "copy_code", "Copy code", "messages"),
    Key("messages.fork", "f", "fork_here", "Fork here", "messages"),
    Key("messages.back", "escape", "back", "Back to prompt", "messages", display="esc"),
    # the conversation list
    Key("sidebar.rename", "r", "rename", "Rename", "sidebar"),
    Key("sidebar.delete", "d,delete", "delete", "Delete", "sidebar"),
    Key("sidebar.archive", "a", "archive", "Archive", "sidebar"),
    Key("sidebar.show_archived", "v", "toggle_archived", "Show archived", "sidebar"),
    # the models screen
    Key("models.new_chat", "enter", "use", "Chat with it", "models"),
    Key("models.download", "g", "download", "Get", "models"),
    Key("models.convert", "c", "convert", "Convert", "models"),
    Key("models.delete", "d,delete", "delete_file", "Delete file", "models"),
    Key("models.default", "s", "set_default", "Set default", "models"),
    Key("models.add", "o", "add_file", "Add a file", "models"),
    Key("models.add_state", "a", "add_state", "Add state", "models",
        long="Register a state-tuning file (.pth) as a starting state for the selected model"),
    Key("models.verify", "v", "verify", "Verify", "models",
        long="Read every tensor of a file and name the first damaged value"),
    Key("models.back", "escape", "back", "Back", "models", display="esc"),
    # the jobs screen
    Key("jobs.cancel", "x,delete", "cancel_job", "Cancel job", "jobs"),
    Key("jobs.clear", "ctrl+d", "clear_finished", "Clear finished", "jobs"),
    Key("jobs.back", "escape", "back", "Back", "jobs", display="esc"),
)

KEYS: dict[str, Key] = {k.id: k for k in _TABLE}
CONTEXTS = {
    "everywhere": "Anywhere",
    "chat": "Chat screen",
    "prompt": "Prompt",
    "messages": "A selected message",
    "sidebar": "Conversation list",
    "models": "Models screen",
    "jobs": "Jobs screen",
}


def bindings(*ids: str) -> list[Binding]:
    """Textual bindings for the given ids (the user's keymap is applied by the app)."""
    out = []
    for binding_id in ids:
        k = KEYS[binding_id]
        out.append(Binding(k.keys, k.action, k.description, show=k.show, priority=k.priority,
                           key_display=k.display, id=k.id))
    return out


def keymap_path() -> Path:
    from runtime.paths import config_dir

    return config_dir() / KEYMAP_FILE


def parse_keymap(data: dict, source: str = KEYMAP_FILE) -> tuple[dict[str, str], list[str]]:
    """Validate a parsed keymap file: ({binding id: keys}, warnings about skipped entries)."""
    table = data.get("keys", {})
    warnings: list[str] = []
    if not isinstance(table, dict):
        return {}, [f"{source}: [keys] must be a table of \"binding.id\" = \"key,key\""]
    unknown_top = set(data) - {"keys"}
    if unknown_top:
        warnings.append(f"{source}: ignoring unknown sections {', '.join(sorted(unknown_top))}")
    keymap: dict[str, str] = {}
    for binding_id, value in table.items():
        if binding_id not in KEYS:
            warnings.append(f"{source}: unknown binding id {binding_id!r} (see the help screen, F1, for ids)")
            continue
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        if not isinstance(value, str) or not value.strip() or any(not p.strip() for p in value.split(",")):
            warnings.append(f"{source}: {binding_id} must be a key name like \"ctrl+r\" or \"f5,ctrl+t\"")
            continue
        keymap[binding_id] = ",".join(p.strip() for p in value.split(","))
    return keymap, warnings


def load_keymap(path: Path | None = None) -> tuple[dict[str, str], list[str]]:
    """The user's key overrides from `config_dir()/keymap.toml` (empty if the file does not exist)."""
    path = path if path is not None else keymap_path()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}, []
    except (OSError, tomllib.TOMLDecodeError) as e:
        return {}, [f"{path}: cannot read the keymap ({e}); using the default keys"]
    return parse_keymap(data, str(path))


def effective_keys(binding_id: str, keymap: dict[str, str]) -> str:
    """The keys bound to `binding_id` after the user's overrides."""
    return keymap.get(binding_id, KEYS[binding_id].keys)


def key_label(keys: str) -> str:
    """A short human label for a comma-separated key list: "ctrl+r" -> "^r"."""
    return " / ".join(k.replace("ctrl+", "^") for k in keys.split(","))
