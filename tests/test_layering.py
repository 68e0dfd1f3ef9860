"""The runtime never imports the front ends: importing it must not pull in Textual or `tui`."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import sys
import runtime, runtime.convert, runtime.formats.checkpoint, runtime.formats.gguf_file
bad = sorted(m for m in sys.modules if m == "textual" or m.startswith(("textual.", "tui")) or m == "tui")
print(",".join(bad))
"""


def test_importing_runtime_never_imports_textual_or_tui() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"runtime imported: {out.stdout.strip()}"


def test_the_check_would_notice_textual() -> None:
    probe = CHECK.replace("import runtime,", "import textual, runtime,")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert "textual" in out.stdout
