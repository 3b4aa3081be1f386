"""loadtest.servers: a server the bench started goes when the bench goes, even killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_server_stops_when_the_process_that_started_it_is_killed(onnx_model, tmp_path):
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from loadtest import servers
                server = servers.start("naive", Path({str(tmp_path)!r}), Path({str(onnx_model)!r}))
                print(server.process.pid, flush=True)
                time.sleep(300)
                """
            ),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pid = int(starter.stdout.readline())
        assert os.path.exists(f"/proc/{pid}")
        starter.send_signal(signal.SIGKILL)  # no finally, no atexit: only the kernel can tell the server
        starter.wait(10)
        wait_until(lambda: not _alive(pid), 30, f"the naive server (pid {pid}) to exit after its starter died")
    finally:
        starter.kill()


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
