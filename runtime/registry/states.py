"""The user's registered starting states: state-tuning files (runtime/model/state_file.py) per model.

Kept in `states.json` in the config folder, written atomically: a list of entries, each naming the
state, its file, the model it is for (a registry id, or a model file's absolute path, as the user
named it), the shape it was checked against and the file's sha256 (so a file changed since it was
added can be told). A state is checked against its model's shape before it is registered; nothing is
written when the check fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runtime.atomic import atomic_write_bytes
from runtime.errors import RwkvError
from runtime.formats.detect import Architecture
from runtime.model.state import State
from runtime.model.state_file import STATE_VERSIONS, check_fits, model_architecture, read_time_states, time_states_of
from runtime.paths import config_dir, data_dir

STATES_FILE = "states.json"
EXPORT_FOLDER = "states"  # in the data folder: states exported from conversations
STATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class StateRegistryError(RwkvError):
    """The registry of starting states cannot be read or the entry cannot be added."""


@dataclass(frozen=True)
class StateEntry:
    name: str
    path: str
    model: str
    arch: str
    n_layer: int
    n_embd: int
    head_size: int
    sha256: str


def states_path() -> Path:
    return config_dir() / STATES_FILE


def load_states() -> list[StateEntry]:
    """Every registered state (none if the file does not exist yet)."""
    path = states_path()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise StateRegistryError(f"{path}: cannot be read as a list of states ({e})") from None
    try:
        return [StateEntry(**item) for item in raw["states"]]
    except (KeyError, TypeError) as e:
        raise StateRegistryError(f"{path}: not a list of states ({e})") from None


def states_for(model: str) -> list[StateEntry]:
    """The states registered for `model` (as it was named when they were added)."""
    return [e for e in load_states() if e.model == model]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def add_state(file: str | os.PathLike[str], model: str, arch: Architecture, model_name: str,
              name: str | None = None) -> StateEntry:
    """Register the state-tuning `file` for `model` (architecture `arch`, called `model_name` in
    messages) after checking that it fits; `name` defaults to the file's stem."""
    file = Path(file).expanduser().resolve()
    states = read_time_states(file)
    check_fits(file, states, arch, model_name)
    name = name or file.stem
    existing = load_states()
    if any(e.model == model and e.name == name for e in existing):
        raise StateRegistryError(f"{model_name} already has a state called '{name}'; choose another with --name")
    entry = StateEntry(name, str(file), model, arch.version, arch.n_layer, arch.n_embd, arch.head_size,
                       _sha256(file))
    data = {"states": [asdict(e) for e in [*existing, entry]]}
    atomic_write_bytes(states_path(), (json.dumps(data, indent=1) + "\n").encode("utf-8"))
    return entry


def add_state_for_model(file: str | os.PathLike[str], model_ref: str, model_path: str | os.PathLike[str],
                        name: str | None = None) -> StateEntry:
    """Register `file` for the model recorded as `model_ref` whose file is `model_path` (its architecture
    read from the file's header): what `rwkv-tui add-state` and the app's "Add a state file" do."""
    from runtime.formats.checkpoint import open_checkpoint

    model_path = Path(model_path)
    return add_state(file, model_ref, open_checkpoint(model_path).arch, model_path.name, name=name)


def states_for_file(model_ref: str, model_path: str | os.PathLike[str]) -> list[StateEntry]:
    """The states a new conversation on `model_path` (recorded as `model_ref`) can start from: those
    registered for the registry id or for the file's path (add-state takes either), one per name,
    of an architecture that has such states."""
    names = {model_ref, str(Path(model_path).expanduser().resolve())}
    out: dict[str, StateEntry] = {}
    for e in load_states():
        if e.model in names and e.arch in STATE_VERSIONS:
            out.setdefault(e.name, e)
    return list(out.values())


def export_state(state: State, model: Any, model_ref: str, name: str) -> StateEntry:
    """Save `state` (of the loaded `model`, recorded as `model_ref`) as a state-tuning `.pth` in the data
    folder and register it for that model as `name`. Such files hold only the WKV matrices: a
    conversation started from it has zero token-shift rows."""
    if not STATE_NAME.match(name):
        raise StateRegistryError(f"'{name}' cannot name a state: use letters, digits, '.', '_' or '-' "
                                 "(up to 64, starting with a letter or digit)")
    if any(e.model == model_ref and e.name == name for e in load_states()):
        raise StateRegistryError(f"{model.path.name} already has a state called '{name}'; choose another name")
    from runtime.formats.pth_writer import write_pth

    arch = model_architecture(model)
    if arch.version not in STATE_VERSIONS:
        raise StateRegistryError(f"{model.path.name} is an {arch.name} model, which has no state-tuned starting "
                                 "states (RWKV-5.2, 6 and 7 have)")
    folder = data_dir() / EXPORT_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(model_ref.encode()).hexdigest()[:12]}-{name}.pth"
    write_pth(path, time_states_of(state, arch))
    return add_state(path, model_ref, arch, model.path.name, name=name)
