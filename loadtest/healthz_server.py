"""A trivial HTTP server to measure the load generator against: every GET gets 200 {"status": "ok"}.

    python -m loadtest.healthz_server --port 8001          # then: python -m loadtest --kind healthz ...

No framework, so that it costs far less per request than the client: an asyncio Protocol (uvloop when
installed) that splits the stream at each blank line and writes a canned keep-alive answer. GET only
(a request body would be read as the next request). ``GET /stats`` answers the requests counted so far
by path, e.g. {"/healthz": 1234}, itself not counted. Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{"status": "ok"}'
COUNTS: Counter[str] = Counter()


class _Http(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        answers = []
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            parts = head.split(b" ", 2)
            path = parts[1].decode("latin-1") if len(parts) > 1 else ""
            if path == "/stats":
                body = json.dumps(COUNTS).encode()
                answers.append(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                    + body
                )
                continue
            COUNTS[path] += 1
            answers.append(OK)
        if answers:
            self.transport.write(b"".join(answers))


async def serve(port: int, ready: asyncio.Event | None = None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Http, "127.0.0.1", port, backlog=4096)
    async with server:
        if ready is not None:
            ready.set()
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.healthz_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--port", type=int, default=8001, help="port on 127.0.0.1 (default 8001)")
    args = p.parse_args(argv)
    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(serve(args.port))
        else:
            uvloop.run(serve(args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
