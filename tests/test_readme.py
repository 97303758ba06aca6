"""The README's Python example runs as written and segments the liver."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_python_example(capsys, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(REPO)
    exec(compile(blocks[0], "README.md", "exec"), {})
    dice = float(re.search(r"liver Dice (\d\.\d+)", capsys.readouterr().out).group(1))
    assert dice > 0.8


def test_readme_starts_with_the_main_job_and_the_test_command():
    first_block = (REPO / "README.md").read_text().split("```")[1]
    assert "python scripts/demo.py" in first_block and "python -m pytest" in first_block
    assert "python -m pytest" in (REPO / ".ci" / "run").read_text()
