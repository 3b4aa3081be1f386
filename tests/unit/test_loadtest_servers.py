"""loadtest.servers.start: a server that exits or never gets ready is reported with the end of its own log,
so the bench's output (and gpu_check's log) says why, not only where the log was."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from loadtest import servers

# 100 numbered lines, then the server exits or hangs without ever opening its port.
FAKE = "import sys, time\nprint('\\n'.join(f'line {{i}}' for i in range(1, 101)), flush=True)\n{then}\n"


@pytest.mark.parametrize(
    ("then", "said"), [("sys.exit(3)", "fake exited with 3"), ("time.sleep(60)", "fake not ready after 3 s")]
)
def test_a_server_that_does_not_get_ready_is_reported_with_the_last_40_lines_of_its_log(
    monkeypatch, tmp_path, then, said
):
    def command(name, port, onnx, backend, device, extra):
        return [sys.executable, "-c", FAKE.format(then=then)], "/readyz"

    monkeypatch.setattr(servers, "command", command)
    with pytest.raises(RuntimeError) as raised:
        servers.start("fake", tmp_path, Path("unused.onnx"), timeout_s=3)
    message = str(raised.value)
    log = next(tmp_path.glob("fake-*.log"))
    assert message.startswith(f"{said}; log {log}, its end:\n")
    tail = message.split(", its end:\n", 1)[1]
    assert tail.splitlines() == [f"line {i}" for i in range(61, 101)]


def test_a_long_start_failure_keeps_what_failed_and_why():
    from loadtest.bench_http import start_failure

    message = "litserve exited with 1; log /x/litserve.log, its end:\n" + "noise\n" * 200 + "ImportError: no litserve"
    short = start_failure(RuntimeError(message))
    assert len(short) == 500
    assert short.startswith("litserve exited with 1") and short.endswith("ImportError: no litserve")
    assert start_failure(RuntimeError("port in use")) == "port in use"
