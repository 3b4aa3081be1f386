"""Servers the bench starts and stops on 127.0.0.1: the service, the naive baseline, the peers.

Each runs in its own session (process group), so stopping it also stops the worker processes that
some frameworks spawn (Mosec, LitServe); nothing else is touched. Each also gets SIGTERM from Linux
when the process that started it dies, however it dies (a bench killed by a timeout's SIGKILL), so
none is left holding its port, its CPUs or the GPU.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.auth import api_key_from_env, auth_headers

REPO = Path(__file__).resolve().parents[1]
# Runs first in the server's process: the service's own follow_parent (PR_SET_PDEATHSIG, kept across
# execve), imported from this checkout whichever checkout the server runs from, then the server itself.
# argv: [this checkout, starter's pid, the server's command...]; a starter already gone: exit at once.
FOLLOW_STARTER = """
import os, sys
sys.path.insert(0, sys.argv[1])
from service.process import follow_parent
if not follow_parent(int(sys.argv[2])):
    sys.exit("the process that started this server is gone")
os.execv(sys.argv[3], sys.argv[3:])
"""


def log_tail(path: Path, lines: int = 40, max_chars: int = 6000) -> str:
    """The last ``lines`` lines of a server's log (at most ``max_chars``): why it exited or never got ready."""
    text = "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    return text[-max_chars:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Started:
    name: str
    url: str
    process: subprocess.Popen
    log_path: Path
    terminated: bool = field(default=False, init=False)  # SIGTERM sent: stop() does not send it again

    def begin_stop(self) -> None:
        """SIGTERM to its process group once, without waiting: servers stopped together drain at once."""
        if self.process.poll() is None and not self.terminated:
            self.terminated = True
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, timeout_s: float = 20) -> None:
        if self.process.poll() is not None:
            return
        try:
            self.begin_stop()
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass


def command(
    name: str, port: int, onnx: Path, backend: str, device: str, extra: list[str] = ()
) -> tuple[list[str], str]:
    """(argv, readiness path) of each server the bench knows."""
    py = sys.executable
    model = ["--port", str(port), "--onnx", str(onnx), "--backend", backend, "--device", device]
    if name == "service":
        return [py, "-m", "service", "--host", "127.0.0.1", *model, *extra], "/readyz"
    if name == "naive":
        return [py, "-m", "loadtest.naive_server", *model], "/readyz"
    if name == "litserve":
        return [py, "-m", "loadtest.peers.litserve_server", "--port", str(port)], "/healthz"
    if name == "mosec":
        return [py, "-m", "loadtest.peers.mosec_server", "--port", str(port), "--address", "127.0.0.1"], "/"
    raise ValueError(f"unknown server {name!r}; choose service, naive, litserve or mosec")


def served(url: str) -> dict | None:
    """What a started service says it serves (its ``/v1/models``): backend, device and precision, how
    many front ends, and where JPEGs are decoded and why (which GPU decoder, its measured chroma).
    A figure is only worth what ran it. None where it does not say (another server, an older one)."""
    try:
        headers = auth_headers(api_key_from_env())
        with urllib.request.urlopen(urllib.request.Request(url + "/v1/models", headers=headers), timeout=5) as r:
            (model,) = json.load(r)["models"]
        backend, decode = model["backend"], model["decode"]
        return {
            "backend": f"{backend['name']} on {backend['device']}, {backend['precision']}",
            "http_workers": model["processes"]["http_workers"],
            "decode": decode["where"],
            "decode_reason": decode["reason"],
        }
    except (OSError, ValueError, KeyError, TypeError):  # best effort: the figures stand without it
        return None


def served_text(facts: dict) -> str:
    """``served``'s facts in words, as the bench prints them."""
    return f"{facts['backend']}, {facts['http_workers']} front end(s); JPEGs: {facts['decode_reason']}"


def start(
    name: str,
    log_dir: Path,
    onnx: Path,
    backend: str = "onnxruntime",
    device: str = "cpu",
    extra: list[str] = (),
    timeout_s: float = 180,
    cwd: Path | None = None,
) -> Started:
    """Start one server on a free port and wait until its readiness path answers 200 (raises otherwise).

    ``cwd``: another checkout of this repository to run the server from (``python -m`` finds the
    packages of the working directory first), e.g. a git worktree of an earlier commit.
    """
    port = free_port()
    argv, ready = command(name, port, onnx, backend, device, list(extra))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "LOADTEST_ONNX": str(onnx),
        "LOADTEST_BACKEND": backend,
        "LOADTEST_DEVICE": device,
    }
    with open(log_path, "wb") as log_file:  # the child keeps its own descriptor; ours closes here
        process = subprocess.Popen(
            [sys.executable, "-c", FOLLOW_STARTER, str(REPO), str(os.getpid()), *argv],
            cwd=cwd or REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Started(name, f"http://127.0.0.1:{port}", process, log_path)
    # The server inherits ALEXNET_API_KEY: its readiness path may need the key (--open-health false).
    try:
        headers = auth_headers(api_key_from_env())
    except ValueError:  # blank: the service refuses it too and exits, which the loop below reports
        headers = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {process.returncode}; log {log_path}, its end:\n{log_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(urllib.request.Request(server.url + ready, headers=headers), timeout=2) as r:
                if r.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"{name} not ready after {timeout_s} s; log {log_path}, its end:\n{log_tail(log_path)}")
