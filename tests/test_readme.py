"""README's "Bring your own model" example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_bring_your_own_model_example_runs(tmp_path, monkeypatch):
    section = README.read_text().split("## Bring your own model", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)  # the example writes runs/ where it runs
    exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "runs" / "tiny" / "summary.json").exists()
