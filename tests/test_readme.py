"""The README's quick start runs as written: its Python block is the ``quickstart``
section of examples/readme_quickstart.py, and that file runs (issue 14: it used to end
in a NameError)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _section(path: Path, name: str) -> str:
    text = path.read_text()
    return text.split(f"# --8<-- [start:{name}]\n")[1].split(f"# --8<-- [end:{name}]")[0]


def test_the_readme_quick_start_is_the_tested_example_verbatim() -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks == [_section(ROOT / "examples" / "readme_quickstart.py", "quickstart")]


def test_the_readme_quick_start_runs() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "readme_quickstart.py")],
                            cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONWARNINGS": "error"})
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.match(r"200 users-[012]\n", out), out
    assert "BalancerSnapshot(name='users'" in out and out.rstrip().endswith("ok")


def test_every_python_block_of_the_readme_comes_from_a_tested_file() -> None:
    """No other Python block may creep into the README untested."""
    text = (ROOT / "README.md").read_text()
    assert not re.findall(r"^```(?:py|py3|python3|pycon)\b", text, flags=re.M)
