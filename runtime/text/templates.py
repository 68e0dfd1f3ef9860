"""Model families: how to talk to each kind of model, read from the `[family.*]` tables of models.toml.

A family says whether its models chat in turns or continue free text, what is fed at the start
(`init`), how a user message is wrapped (`user`, with `{message}`), what follows a finished reply
(`separator`) and where a reply stops (`stop`). The text fed to the model for a whole conversation is
always the same function of its messages (`Family.fed_text`), whether the messages are being
generated live or re-read for another model, so states built either way describe the same context.

Families of thinking models (G1) also say how a prompt ends with thinking on (`think_on`, the model
writes its reasoning, then `think_close`, then the answer) or off (`think_off`: an empty think block,
closed by the prompt). Which of the two was fed is recorded with each message (`think`: True, False,
or None for a message written without the markup), so re-reading a transcript feeds the same text.
A family without the markup reads a reply written with thinking as its answer only.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import RwkvError
from runtime.text.sampling import SamplingSettings

MODES = ("chat", "novel")
_KEYS = {"description", "mode", "tokenizer", "init", "system", "user", "separator", "stop", "think_on", "think_off",
         "think_close", "sampling"}
_BLANK_LINES = re.compile(r"\n{2,}")


class FamilyError(RwkvError, ValueError):
    """A `[family.*]` table in a models.toml is malformed."""


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    mode: str
    tokenizer: str
    init: str
    user: str
    separator: str
    stop: tuple[str, ...]
    sampling: SamplingSettings
    system: str = ""  # the system turn, with {message}; "" if the family has none
    think_on: str = ""  # appended to a user turn with thinking on ("" if the family does not think)
    think_off: str = ""  # appended with thinking off: an empty think block the prompt closes
    think_close: str = ""  # ends the think block

    @property
    def thinks(self) -> bool:
        """True for families of thinking models (a user turn ends with `think_on` or `think_off`)."""
        return bool(self.think_on)

    def clean(self, message: str) -> str:
        """A chat message as fed: CRLF to LF, blank lines folded, stripped (G1's official cleaning)."""
        return clean_message(message) if self.mode == "chat" else message

    def user_turn(self, message: str, think: bool | None = None) -> str:
        """What is fed for a user message; `think` picks the prompt's ending in a thinking family."""
        return self.user.replace("{message}", self.clean(message)) + self.think_suffix(think)

    def think_suffix(self, think: bool | None) -> str:
        if not self.thinks or think is None:
            return ""
        return self.think_on if think else self.think_off

    def system_turn(self, system: str) -> str:
        """The system turn for `system` ("" when there is none or the family has no system turn)."""
        system = clean_message(system)
        if not system or not self.system:
            return ""
        return self.system.replace("{message}", system)

    def init_text(self, system: str = "") -> str:
        """What a conversation starts with: the family's init, then the system turn if any."""
        return self.init + self.system_turn(system)

    def fed_text(self, role: str, content: str, complete: bool, previous_complete: bool,
                 think: bool | None = None) -> str:
        """The text a message adds to the model's context.

        `previous_complete` is False after a reply that was cut short (stopped or length): its
        separator was never fed, so it is fed before the next user message. `think` is what the
        message recorded: for a user turn, the ending its prompt was given; for a reply, the one its
        prompt had (a family without thinking feeds such a reply's answer only).
        """
        if role == "init":
            return content
        if role in ("user", "text"):
            prefix = "" if previous_complete else self.separator
            return prefix + (self.user_turn(content, think) if role == "user" else content)
        if role == "assistant":
            if think is not None and not self.thinks:
                answer = self.split_reply(content, think)[1].strip()
                content = " " + answer if answer else ""
            return content + (self.separator if complete else "")
        raise ValueError(f"unknown message role {role!r}")

    def split_reply(self, content: str, think: bool | None) -> tuple[str | None, str]:
        """(thinking, answer) of a reply written after a prompt ending `think_suffix(think)`: see
        `split_reply` (works for any family, the G1 markup being the default, so a reply keeps its
        parts after a switch of family)."""
        return split_reply(content, think, self.think_off or G1_THINK_OFF, self.think_close or G1_THINK_CLOSE)

    def answer_start(self, text: str, think: bool | None) -> int | None:
        """Where the answer begins in a reply's `text` so far, or None while its think block is open.

        Stop strings and end-of-text end a reply only from here on. After a think block, the
        whitespace that follows it belongs to no one: the answer starts at its first other character.
        """
        if not self.thinks or think is None:
            return 0
        if think:
            full = self.think_on + text
            at = full.find(self.think_close)
            if at < 0:
                return None
            start = at + len(self.think_close) - len(self.think_on)
        else:
            rest = _close_rest(self.think_off, self.think_close)
            if text.startswith(rest):
                start = len(rest)
            elif rest.startswith(text):
                return None  # the block's last characters may still come
            else:
                start = 0
        while start < len(text) and text[start].isspace():
            start += 1
        return start


G1_THINK_OFF = " <think>\n</think"  # BlinkDL's RWKV7-G1x-templates.txt: the fast (empty think) ending
G1_THINK_CLOSE = "</think>"


def split_reply(content: str, think: bool | None, think_off: str = G1_THINK_OFF,
                think_close: str = G1_THINK_CLOSE) -> tuple[str | None, str]:
    """(thinking, answer) of a reply whose prompt ended with thinking on (True), off (False) or without
    the markup (None). Thinking is None unless the prompt opened a think block; while the block is
    still open the whole reply is thinking and the answer is ""."""
    if think is None:
        return None, content
    if not think:
        rest = _close_rest(think_off, think_close)
        return None, content.removeprefix(rest) if rest else content
    body = content.removeprefix(">")
    at = body.find(think_close)
    if at < 0:
        return body, ""
    return body[:at], body[at + len(think_close):]


def _close_rest(think_off: str, close: str) -> str:
    """What the model writes to finish the close tag `think_off` ends with (">" for "…</think")."""
    for n in range(min(len(close), len(think_off)), 0, -1):
        if think_off.endswith(close[:n]):
            return close[n:]
    return ""


def clean_message(text: str) -> str:
    """G1's official cleaning of a System/User text (RWKV7-G1x-templates.txt):
    `re.sub(r'\\n{2,}', '\\n', text.replace('\\r\\n','\\n')).strip()`."""
    return _BLANK_LINES.sub("\n", text.replace("\r\n", "\n")).strip()


def fold_blank_lines(text: str) -> str:
    """Replace every run of blank lines by a single newline ("\\n\\n" separates speakers)."""
    return _BLANK_LINES.sub("\n", text.replace("\r\n", "\n"))


def _parse(name: str, table: object, source: str) -> Family:
    where = f"{source}: [family.{name}]"
    if not isinstance(table, dict):
        raise FamilyError(f"{where} must be a table")
    unknown = set(table) - _KEYS
    if unknown:
        raise FamilyError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
    mode = table.get("mode", "chat")
    if mode not in MODES:
        raise FamilyError(f"{where}: mode must be one of {', '.join(MODES)}, got {mode!r}")
    strings = {}
    for key, default in (("description", name), ("tokenizer", "20b"), ("init", ""), ("user", "{message}"),
                         ("separator", ""), ("system", ""), ("think_on", ""), ("think_off", ""), ("think_close", "")):
        value = table.get(key, default)
        if not isinstance(value, str):
            raise FamilyError(f"{where}: {key} must be a string")
        strings[key] = value
    if "{message}" not in strings["user"]:
        raise FamilyError(f"{where}: user must contain {{message}}")
    if strings["system"] and "{message}" not in strings["system"]:
        raise FamilyError(f"{where}: system must contain {{message}}")
    think = [strings[k] for k in ("think_on", "think_off", "think_close")]
    if any(think) and not all(think):
        raise FamilyError(f"{where}: think_on, think_off and think_close go together (all three or none)")
    if any(think) and mode != "chat":
        raise FamilyError(f"{where}: thinking needs mode = \"chat\"")
    stop = table.get("stop", [])
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise FamilyError(f"{where}: stop must be a list of non-empty strings")
    sampling_table = table.get("sampling", {})
    if not isinstance(sampling_table, dict):
        raise FamilyError(f"{where}: sampling must be a table")
    try:
        sampling = SamplingSettings.from_dict(sampling_table)
    except ValueError as e:
        raise FamilyError(f"{where}.sampling: {e}") from None
    return Family(name=name, mode=mode, stop=tuple(stop), sampling=sampling, **strings)


def shipped_catalog() -> Path:
    """The models.toml that ships with rwkv-tui."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "registry" / "models.toml", here.parents[1] / "models.toml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("rwkv-tui's models.toml is missing from the installation")


def user_catalog() -> Path:
    from runtime.paths import config_dir

    return config_dir() / "models.toml"


def load_families(paths: Iterable[Path] | None = None) -> dict[str, Family]:
    """Every valid family by name (see `read_families` for the warnings about invalid ones)."""
    return read_families(paths)[0]


def read_families(paths: Iterable[Path] | None = None) -> tuple[dict[str, Family], list[str]]:
    """Families from the shipped models.toml, then the user's (same name: the user's wins).

    Returns (families, warnings): a malformed family is skipped with a warning, never fatal, except
    that the shipped file must be readable.
    """
    if paths is None:
        paths = [shipped_catalog(), user_catalog()]
    families: dict[str, Family] = {}
    warnings: list[str] = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            warnings.append(f"{path}: not valid TOML ({e}); its families are ignored")
            continue
        tables = data.get("family", {})
        if not isinstance(tables, dict):
            warnings.append(f"{path}: 'family' must be a table of tables")
            continue
        for name, table in tables.items():
            try:
                families[name] = _parse(name, table, str(path))
            except FamilyError as e:
                warnings.append(str(e))
    return families, warnings


def get_family(name: str, families: dict[str, Family] | None = None) -> Family:
    families = families if families is not None else load_families()
    try:
        return families[name]
    except KeyError:
        raise FamilyError(f"unknown model family {name!r}; known: {', '.join(sorted(families))}") from None


WORLD_VOCAB = 65536
_G1_NAME = re.compile(r"(?:^|[^a-z0-9])g[01][a-z]?[0-9]?(?:[^a-z0-9.]|$)")  # a "g1", "g1e", "g0a2" word
_V7_NAME = re.compile(r"x070|rwkv-?7|(?:^|[^a-z0-9])v7(?:[^a-z0-9]|$)")  # the World tokenizer's vocabulary size


def guess_family(file_name: str, tokenizer_name: str | None = None, *, vocab: int | None = None,
                 families: Iterable[str] | None = None) -> str:
    """The family of a model file the registry does not know; `add`, `get URL`, `chat` and the app all
    guess with this. A family named in the file (G1: a "g1…"/"g0…" word; RWKV-7 World; BlinkDL's
    RWKV-4-Novel-…, -World-, -Pile-, -Raven-),
    else World for the World tokenizer (by name or vocabulary size), else Raven: an unnamed RWKV-4 file
    (rwkv4-…) is taken for a chat model, not for a base model that only continues text. `families`,
    when given, limits the answer to the families known there."""
    known = None if families is None else set(families)

    def usable(name: str) -> bool:
        return known is None or name in known

    lower = file_name.lower()
    if _G1_NAME.search(lower) and usable("g1"):
        return "g1"  # rwkv7-g1e-1.5b-…, RWKV7-G1l-…-GGUF, rwkv7-0.1B-g1-F16, the G0 series too
    if "world" in lower and _V7_NAME.search(lower) and usable("world7"):
        return "world7"  # RWKV-x070-World-…, rwkv7-…-world
    for hint in ("novel", "world", "pile", "raven"):
        if hint in lower and usable(hint):
            return hint
    world = tokenizer_name == "rwkv-world" or vocab == WORLD_VOCAB
    for name in ("world", "raven") if world else ("raven",):
        if usable(name):
            return name
    return sorted(known)[0] if known else "raven"
