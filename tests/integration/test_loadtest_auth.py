"""``python -m loadtest`` against ``python -m service`` started with ALEXNET_API_KEY: the key comes from
the environment and reaches every load process; without it, the run says every request got 401."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.integration.conftest import API_KEY

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _loadtest(url: str, out, key: str | None) -> subprocess.CompletedProcess:
    """Four small images (the keyed server takes 64 KiB bodies) over two load processes."""
    env = {k: v for k, v in os.environ.items() if k != "ALEXNET_API_KEY"}
    if key is not None:
        env["ALEXNET_API_KEY"] = key
    return subprocess.run(
        [
            *(sys.executable, "-m", "loadtest", "--url", url, "--kind", "raw", "--images", "96x96"),
            *("--concurrency", "2", "--requests", "4", "--procs", "2", "--warmup-s", "0"),
            *("--no-plots", "--quiet", "--out", str(out)),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _refuse(constant: str):
    raise ValueError(f"not JSON: {constant}")


def test_the_key_in_the_environment_opens_a_keyed_server_for_every_process(keyed_server, tmp_path):
    proc = _loadtest(keyed_server.url, tmp_path / "keyed", API_KEY)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "keyed" / "report.json").read_text()
    doc = json.loads(text, parse_constant=_refuse)
    (step,) = doc["steps"]
    assert step["procs"] == 2 and step["requests"] == step["ok"] == 4 and step["errors"] == 0
    assert doc["server"]["models"][0]["name"] == "alexnet"  # /v1/models, which needs the key too
    assert doc["api_key_sent"] is True and API_KEY not in text  # the report never holds the key


@pytest.mark.parametrize(("key", "says"), [(None, "set $ALEXNET_API_KEY"), ("wrong", "did not accept the key")])
def test_without_the_right_key_the_run_says_every_request_got_401(keyed_server, tmp_path, key, says):
    proc = _loadtest(keyed_server.url, tmp_path / "refused", key)
    assert proc.returncode == 1
    assert "loadtest: failed: c=2: all 4 requests failed: 4 x 401 Unauthorized: missing or wrong API key" in proc.stderr
    assert "loadtest: every request was refused with 401: " in proc.stderr and says in proc.stderr
    (step,) = json.loads((tmp_path / "refused" / "report.json").read_text(), parse_constant=_refuse)["steps"]
    assert step["p50_ms"] is None and step["errors_by_status"] == {"401": 4}
