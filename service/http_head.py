"""uvicorn's httptools protocol with a bound on the request head (request line and headers).

uvicorn's httptools protocol keeps every header of a request, with no limit on their size or count
(its h11 protocol has one, 16 KiB): a resource review sent `GET /healthz` with 70 MB of headers and
the front end grew by 1.17 GB; one header value sent in pieces without its line end costs more
still, as the parser copies the value so far on every piece (40 MB: 18 s of the event loop). The
body limit (``max_body_bytes``) does not apply to the head.

So the head is bounded twice. As the parser hands over the request line and each complete header,
their bytes are counted: past ``MAX_HEAD_BYTES`` the connection gets 431 and is closed, before the app
sees the request, the way nginx and Node.js bound theirs (8-32 KiB and 16 KiB). And the bytes that
arrive while a head is incomplete are counted before the parser sees them, so a header that never
ends is refused the same way once it is past the bound (give or take one read, 256 KiB at most).
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import HeadersTooLarge

MAX_HEAD_BYTES = 64 * 1024
_TOO_LARGE = HeadersTooLarge(f"the request line and headers exceed {MAX_HEAD_BYTES} bytes")
_REFUSAL = json.dumps({"error": _TOO_LARGE.message, "kind": _TOO_LARGE.kind}).encode()


class _HeadTooLarge(Exception):
    pass


class BoundedHeadProtocol(HttpToolsProtocol):
    _head_bytes = 0  # of the request line and complete headers, as parsed
    _arrived = 0  # bytes received since the request began, while its head is incomplete
    _in_body = False  # from the end of a request's headers to its end
    _too_large = False

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if not self._in_body:
            self._arrived += len(data)
            if self._arrived > MAX_HEAD_BYTES + len(data):  # over before this read, head still open
                self._refuse()
                return
        super().data_received(data)  # a head over the bound as parsed ends in send_400_response
        if not self._in_body and self._arrived > MAX_HEAD_BYTES and not self.transport.is_closing():
            self._refuse()  # this read took an unfinished head past the bound

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = self._arrived = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF: what a header costs on the wire
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_body = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    def _count(self, nbytes: int) -> None:
        self._head_bytes += nbytes
        if self._head_bytes > MAX_HEAD_BYTES:
            self._too_large = True
            raise _HeadTooLarge  # httptools stops parsing; uvicorn answers through send_400_response

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._refuse()
        else:
            super().send_400_response(msg)

    def _refuse(self) -> None:
        self.transport.write(
            b"HTTP/1.1 %d Request Header Fields Too Large\r\ncontent-type: application/json\r\n" % _TOO_LARGE.status
            + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(_REFUSAL)
            + _REFUSAL
        )
        self.transport.close()
