"""The engine's end of its link to the front ends: the listening socket, and one front end's
connection (its arena, its requests in flight, and its outbox of answers)."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

from service import wire
from service.arena import ArenaView


def listening_socket(address: str) -> socket.socket:
    """The engine's socket at an abstract address (``address`` without the leading NUL)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind("\0" + address)
    sock.listen(128)
    sock.setblocking(False)
    return sock


@dataclass(eq=False)
class Connection:
    frontend: int
    pid: int
    arena: ArenaView
    writer: asyncio.StreamWriter
    pending: dict[int, list[asyncio.Future]] = field(default_factory=dict)
    preloading: set[int] = field(default_factory=set)  # requests being normalised before they queue
    cancelled: set[int] = field(default_factory=set)  # Cancels that came while they were
    leaving: bool = False  # it said Goodbye
    _outbox: list[bytes] = field(default_factory=list)

    def send(self, message: object) -> None:
        """Queue a message; everything queued in one turn of the event loop goes in one write (a
        finished batch answers many requests of the same front end at once)."""
        if self.writer.is_closing():
            return
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self.flush)
        self._outbox.append(wire.encode(message))

    def flush(self) -> None:
        if self._outbox and not self.writer.is_closing():
            self.writer.write(b"".join(self._outbox))
        self._outbox.clear()
