"""uvicorn's httptools protocol with a bound on the request head (request line and headers).

uvicorn's httptools protocol keeps every header of a request, with no limit on their size or count
(its h11 protocol has one, 16 KiB): a resource review sent `GET /healthz` with 70 MB of headers and
the front end grew by 1.17 GB. The body limit (``max_body_bytes``) does not apply to the head. Past
``MAX_HEAD_BYTES`` the connection gets 431 and is closed, before the app sees the request, the way
nginx and Node.js bound theirs (8-32 KiB and 16 KiB).
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024


class HeadTooLarge(Exception):
    pass


class BoundedHeadProtocol(HttpToolsProtocol):
    _head_bytes = 0
    _head_too_large = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF: what a header costs on the wire
        super().on_header(name, value)

    def _count(self, nbytes: int) -> None:
        self._head_bytes += nbytes
        if self._head_bytes > MAX_HEAD_BYTES:
            self._head_too_large = True
            raise HeadTooLarge  # httptools stops parsing; uvicorn answers through send_400_response

    def send_400_response(self, msg: str) -> None:
        if not self._head_too_large:
            super().send_400_response(msg)
            return
        body = json.dumps(
            {
                "error": f"the request line and headers exceed {MAX_HEAD_BYTES} bytes",
                "kind": "headers_too_large",
            }
        ).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            + body
        )
        self.transport.close()
