"""An HTTP front-end process: uvicorn serving the app on the listening socket it inherited.

    python -m service.frontend --socket NAME --index K --listen-fd FD --decode-budget-fd FD2
    # started by service.supervisor

Every front end accepts on the same socket (the kernel spreads connections among them) and does
HTTP, auth, limits, multipart, format checks and, on the CPU path, decoding into its arena; the
engine does the rest. SIGTERM (from the supervisor): stop accepting, finish the requests in flight,
exit.
"""

from __future__ import annotations

import argparse
import logging
import socket

import uvicorn

from service.app import create_app
from service.http_head import BoundedHeadProtocol
from service.process import follow_parent, reuse_freed_memory, settle_garbage_collector
from service.settings import Settings


def uvicorn_config(app, settings: Settings, **overrides) -> uvicorn.Config:
    """A front end's uvicorn settings (``overrides``: in-process test servers' host and port)."""
    options = {
        "http": BoundedHeadProtocol,
        "log_level": settings.log_level,
        "timeout_graceful_shutdown": int(settings.request_timeout_s) + 5,
        "access_log": settings.log_level == "debug",
        "limit_concurrency": settings.max_connections or None,
    }
    return uvicorn.Config(app, **(options | overrides))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.frontend", description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="the engine's abstract Unix socket name")
    parser.add_argument("--index", type=int, required=True, help="this front end's number, 0..N-1")
    parser.add_argument("--listen-fd", type=int, required=True, help="inherited listening TCP socket")
    parser.add_argument(
        "--decode-budget-fd", type=int, default=None, help="inherited decode budget file (service.decode_budget)"
    )
    parser.add_argument("--parent", type=int, default=None, help="supervisor pid: exit when it is gone")
    args = parser.parse_args(argv)
    if not follow_parent(args.parent):
        return 1
    reuse_freed_memory()
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s[http {args.index}]: %(message)s",
    )
    listener = socket.socket(fileno=args.listen_fd)
    app = create_app(settings, engine_address=args.socket, frontend=args.index, decode_budget_fd=args.decode_budget_fd)
    server = uvicorn.Server(uvicorn_config(app, settings))
    settle_garbage_collector()
    server.run(sockets=[listener])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
