"""The README's "API at a glance" block runs as written: every name it uses is defined there."""
from __future__ import annotations

import pathlib
import re
import warnings

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _api_block() -> str:
    text = README.read_text()
    section = text[text.index("## API at a glance"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_api_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # it writes m.eitpz
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. prepare_qat's warning about layers it did not convert
        exec(compile(_api_block(), str(README), "exec"), namespace)
    assert (tmp_path / "m.eitpz").exists()
    tags = set(namespace["logged"]) - {"step"}  # a dict logger also gets the step
    assert tags and all(tag.startswith("entropy_bits/") for tag in tags)
    assert namespace["y"].shape == (4096, 10)
