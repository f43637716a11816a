"""uvicorn's HTTP/1.1 protocol with a deadline on the request head (slow loris, headers).

uvicorn arms no timer until a response has been sent (``timeout_keep_alive`` then covers the
idle gap before the next request), so a client that connects and sends nothing, or sends its
request line and headers a byte at a time, holds a connection — a file descriptor and a slot
under any connection limit — for as long as it likes; the ASGI app never sees it, so no
middleware can help (api/security/deadline.py guards bodies). Found by
tests/test_abuse.py::test_slow_headers_and_idle_connections_are_cut_off.

This subclass starts a timer when the connection opens and when each request's first byte
arrives, stops it when the head is complete, and on expiry answers 408 and closes. `voxmem
serve` selects it with ``uvicorn.run(http="api.security.head_deadline:HeadDeadlineProtocol")``
(an import string, so ``--workers`` processes load it too).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from db.settings import get_settings

_BODY = b'{"detail":"request head not received in time"}'
_RESPONSE = b"".join(
    [
        b"HTTP/1.1 408 Request Timeout\r\n",
        b"content-type: application/json\r\n",
        b"connection: close\r\n",
        b"content-length: " + str(len(_BODY)).encode() + b"\r\n\r\n",
        _BODY,
    ]
)


class HeadDeadlineProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timeout = get_settings().request_head_timeout_secs
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        super().on_headers_complete()

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        if self._head_timeout > 0:
            self._head_timer = self.loop.call_later(self._head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.write(_RESPONSE)
            self.transport.close()
