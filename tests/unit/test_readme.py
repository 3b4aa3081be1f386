"""The README's configuration and error tables against the code (as LitServe tests its README), so
neither can drift: every flag in the table exists with the default it states; every error kind in the
table exists with the status it states, and every kind a client can get is in the table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import service.oip  # noqa: F401  # registers the protocol's error kinds
from service.errors import kinds
from service.settings import Settings, default_of
from tests.conftest import REPO


def table_after(heading: str, text: str) -> list[list[str]]:
    """The cells of the first Markdown table after the line ``heading`` (header and rule left out)."""
    lines = text[text.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def code_spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def kinds_in(cell: str) -> list[str]:
    """The kinds a row of the error table names, not what it says in brackets (``(with `Retry-After`)``)."""
    return code_spans(re.sub(r"\([^)]*\)", "", cell))


README = (REPO / "README.md").read_text()
SETTINGS_ROWS = table_after("## Configuration", README)
ERROR_ROWS = table_after("Errors are JSON", README)


def as_written(value: object) -> str:
    """A default as the README writes it: paths as text, None as 'none', 2.0 as '2', True as 'true'."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Path):
        return str(value)
    return str(value)


def test_the_tables_were_found():
    assert len(SETTINGS_ROWS) >= 10 and len(ERROR_ROWS) >= 10


@pytest.mark.parametrize("row", SETTINGS_ROWS, ids=lambda row: row[0])
def test_every_flag_in_the_settings_table_exists_with_the_stated_default(row):
    flags = code_spans(row[0])
    assert flags and all(flag.startswith("--") for flag in flags), row[0]
    defaults = [d.strip().strip("`") for d in row[1].split(",")]
    if len(defaults) == 1:
        defaults *= len(flags)  # `--device`, `--precision` | `auto`: one default for both
    assert len(defaults) == len(flags), f"{row[0]}: {len(flags)} flags but defaults {row[1]!r}"
    for flag, stated in zip(flags, defaults, strict=True):
        name = flag.removeprefix("--").replace("-", "_")
        assert name in Settings.model_fields, f"README names {flag}, which is not a setting"
        actual = as_written(default_of(name))
        assert stated == actual, f"README says {flag} defaults to {stated!r}; Settings says {actual!r}"


def test_every_error_kind_in_the_table_exists_with_the_stated_status():
    known = kinds()
    for row in ERROR_ROWS:
        status = int(row[0])
        for kind in kinds_in(row[1]):
            assert kind in known, f"README lists kind {kind!r}, which service/errors.py does not define"
            assert known[kind].status == status, f"{kind}: README says {status}, the code {known[kind].status}"


def test_every_kind_a_client_can_get_is_in_the_table():
    listed = {kind for row in ERROR_ROWS for kind in kinds_in(row[1])}
    missing = set(kinds()) - listed
    assert not missing, f"error kinds missing from README's error table: {sorted(missing)}"


def test_headers_named_in_the_error_table_are_sent():
    for row in ERROR_ROWS:
        for kind, header in re.findall(r"`(\w+)` \(with `([\w-]+)`\)", row[1]):
            assert header in kinds()[kind].headers, f"README says {kind} comes with {header}"


def test_every_setting_is_documented_where_a_user_looks():
    """Each setting is named, as its flag, its ALEXNET_ variable or (docs/hardening.md's limits table) its
    field name, in the README or a page of docs/, not only in ``python -m service --help``."""
    pages = README + "".join(page.read_text() for page in sorted((REPO / "docs").glob("*.md")))
    unnamed = [
        name
        for name in Settings.model_fields
        if not any(form in pages for form in (f"--{name.replace('_', '-')}", f"ALEXNET_{name.upper()}", f"`{name}`"))
    ]
    assert not unnamed, f"settings no page names (add them to README's Configuration table): {unnamed}"
