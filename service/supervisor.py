"""The process that ``python -m service`` runs: one engine process and N HTTP front ends.

    clients --HTTP--> [listening socket, shared] --> front end 0 .. N-1 (uvicorn, FastAPI)
                                                        |  small messages over a Unix socket,
                                                        |  pixels through each front end's arena
                                                        v
                                                     engine (backend, batcher, metrics)

It binds the port once and hands the socket to every front end (the kernel spreads connections),
starts the engine on a fresh abstract Unix socket name, and watches them all:
- a front end that exits is replaced; the others keep serving;
- an engine that exits makes every front end answer 503 ``not_ready`` at once (their connection
  closes) and is restarted;
- a process that keeps dying (``MAX_RESTARTS`` within ``RESTART_WINDOW_S``) stops the server with a
  non-zero exit code and a log line naming which process and how it died;
- an engine that could not load the model (it exits ``EXIT_MODEL_NOT_LOADED`` after logging why) is
  not restarted: the model will not load the next time either, and a server up but never ready hides
  that from whoever started it. The server stops, exit status 3 (as Triton's ``--exit-on-error``).
SIGTERM or SIGINT: close the port, stop the front ends (each finishes its requests in flight), then
the engine (it finishes what is queued), exit 0. The children run in process groups of their own, so
a terminal's Ctrl-C reaches the supervisor only; where they are signalled all at once anyway (systemd's
control-group kill, a supervisor killed), the engine serves the front ends still connected until they
have finished and left. Children follow a supervisor that is killed
(PR_SET_PDEATHSIG), and shared memory is anonymous (memfd), so nothing is left behind.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from service.decode_budget import create_budget_file
from service.process import EXIT_FAILED, EXIT_MODEL_NOT_LOADED
from service.settings import Settings

log = logging.getLogger("service.supervisor")
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
POLL_S = 0.05


class GiveUp(Exception):
    """The server stops with ``code`` and this message: a process keeps dying, or the model did not load."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Child:
    name: str
    argv: list[str]
    pass_fds: tuple[int, ...] = ()
    process: subprocess.Popen | None = None
    deaths: deque = field(default_factory=deque)  # monotonic times of unplanned exits

    def start(self) -> None:
        # Its own process group: a terminal's Ctrl-C reaches only this supervisor, which stops the
        # children in order (front ends first, then the engine) instead of all of them at once.
        self.process = subprocess.Popen(self.argv, pass_fds=self.pass_fds, process_group=0)
        log.info("started %s (pid %d)", self.name, self.process.pid)

    def exited(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def record_death(self, code: int) -> None:
        now = time.monotonic()
        self.deaths.append(now)
        while self.deaths and now - self.deaths[0] > RESTART_WINDOW_S:
            self.deaths.popleft()
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        if len(self.deaths) > MAX_RESTARTS:
            raise GiveUp(
                f"{self.name} died {len(self.deaths)} times in {RESTART_WINDOW_S:.0f} s (last: {how}); giving up"
            )
        log.error("%s (pid %d) died (%s); restarting it", self.name, self.process.pid, how)  # type: ignore[union-attr]

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.error("%s (pid %d) did not stop in %.0f s; killing it", self.name, self.process.pid, timeout_s)
            self.process.kill()
            self.process.wait()


def bind_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.address = f"alexnet-serve-{os.getpid()}-{secrets.token_hex(8)}"
        self._stop_signal: int | None = None

    def _on_signal(self, signum: int, _frame) -> None:
        self._stop_signal = signum

    def run(self) -> int:
        s = self.settings
        listener = bind_listener(s.host, s.port)
        host, port = listener.getsockname()[:2]
        n = s.frontends
        log.info(
            "supervisor (pid %d) listening on http://%s:%d with %d HTTP front end(s) x %d decode thread(s) and one engine",
            os.getpid(),
            host,
            port,
            n,
            s.decoder_threads,
        )
        budget_fd = create_budget_file()  # one decode memory budget for all front ends
        common = ["--socket", self.address, "--parent", str(os.getpid())]
        engine = Child("engine", [sys.executable, "-m", "service.engine", *common])
        frontends = [
            Child(
                f"http front end {k}",
                [
                    sys.executable,
                    "-m",
                    "service.frontend",
                    *common,
                    "--index",
                    str(k),
                    "--listen-fd",
                    str(listener.fileno()),
                    "--decode-budget-fd",
                    str(budget_fd),
                ],
                pass_fds=(listener.fileno(), budget_fd),
            )
            for k in range(n)
        ]
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        code = 0
        try:
            engine.start()
            for child in frontends:
                child.start()
            while self._stop_signal is None:
                time.sleep(POLL_S)
                for child in (engine, *frontends):
                    exit_code = child.exited()
                    if exit_code is not None and self._stop_signal is None:
                        if child is engine and exit_code == EXIT_MODEL_NOT_LOADED:
                            raise GiveUp(
                                f"the engine could not load the model (the reason is logged above); stopping, exit "
                                f"status {EXIT_MODEL_NOT_LOADED}",
                                EXIT_MODEL_NOT_LOADED,
                            )
                        child.record_death(exit_code)
                        child.start()
        except GiveUp as exc:
            log.critical("%s", exc)
            code = exc.code
        else:
            log.info("%s: stopping", signal.Signals(self._stop_signal).name)
        finally:
            listener.close()  # new connections are refused from here on
            os.close(budget_fd)  # the front ends hold their own copies
            graceful_s = s.request_timeout_s + 10
            for child in frontends:
                child.terminate()
            for child in frontends:
                child.wait(graceful_s)
            engine.terminate()
            engine.wait(graceful_s)
        log.info("stopped")
        return code
