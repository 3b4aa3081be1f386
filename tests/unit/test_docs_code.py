"""The Python examples in README.md and docs/ are valid Python, formatted as the code is (ruff format,
the project's settings), so an example cannot drift into a syntax error or another style; and the
shell recipes do not show an engine build that TensorRT 11 refuses."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
BLOCKS = [
    pytest.param(match.group(1), id=f"{page.relative_to(REPO)}:{page.read_text()[: match.start()].count(chr(10)) + 1}")
    for page in PAGES
    for match in re.finditer(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M)
]


def test_the_docs_have_python_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("code", BLOCKS)
def test_a_python_example_is_formatted_as_the_code_is(code):
    run = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--diff", "--stdin-filename", "example.py", "-"],
        input=code,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def _commands(page) -> list[str]:
    """The shell commands of a page's code blocks, continuation lines joined."""
    text = page.read_text()
    blocks = re.findall(r"^```(?:bash|sh)?\n(.*?)^```", text, re.S | re.M)
    return [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]


def test_every_shown_fp16_engine_build_reads_the_fp16_onnx():
    """TensorRT 11 refuses --precision fp16 from an fp32 ONNX (export/to_trt.py plan_build): a recipe
    that builds an fp16 engine must build it from to_onnx.py --precision fp16's file (docs/export.md)."""
    builds = [
        (page.name, line)
        for page in PAGES
        for line in _commands(page)
        if re.search(r"to_trt(\.py)?\b", line) and "--onnx" in line
    ]
    assert builds  # README.md, docs/deploy.md and docs/export.md show engine builds
    wrong = [
        (page, line)
        for page, line in builds
        if re.search(r"--precision\s+fp16", line) and not re.search(r"--onnx\s+\S+\.fp16\.onnx", line)
    ]
    assert not wrong, wrong
    assert any(page == "deploy.md" and re.search(r"--onnx\s+\S+\.fp16\.onnx", line) for page, line in builds)


def test_every_test_and_file_the_docs_cite_exists():
    """A page that says what proves a behaviour ("proven by `test_...`", `tests/.../x.py`) must name a
    test or file that is there: a renamed test leaves the claim unsupported."""
    tests = "".join(path.read_text() for path in (REPO / "tests").rglob("*.py"))
    text = "".join(page.read_text() for page in PAGES)
    missing = [name for name in set(re.findall(r"`(test_\w+)`", text)) if f"def {name}(" not in tests]
    missing += [
        path
        for path in set(re.findall(r"`((?:tests|service|model|export|loadtest|scripts)/[\w/.]+\.\w+)`", text))
        if not (REPO / path).exists()
    ]
    assert not missing, f"the docs cite what does not exist: {sorted(missing)}"
