"""Read a request body under a hard byte cap, straight from the ASGI receive channel.

``await request.body()`` buffers whatever arrives; a chunked upload has no Content-Length to
check up front. Here the declared length is checked before the first read, and the running
count of received bytes after every chunk, so an oversized body is refused with 413 as soon as
it crosses the cap and the rest is never read into memory.

The whole body must also arrive within ``timeout_secs``: uvicorn has no body read timeout
(``timeout_keep_alive`` only covers the idle time between requests), so without this a client
trickling one byte a second (slow loris) holds the request open for as long as it likes.
"""

from __future__ import annotations

import asyncio

from starlette.types import Receive


class BodyTooLargeError(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds {limit} bytes")
        self.limit = limit


class BadContentLengthError(Exception):
    """The Content-Length header is not a non-negative integer."""


class ClientDisconnectedError(Exception):
    """The client went away before the whole body arrived."""


class BodyTimeoutError(Exception):
    def __init__(self, timeout_secs: float) -> None:
        super().__init__(f"request body not received within {timeout_secs:g} s")
        self.timeout_secs = timeout_secs


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            if not text.isdigit():
                raise BadContentLengthError(f"invalid Content-Length {text[:32]!r}")
            return int(text)
    return None


async def read_capped_body(
    receive: Receive,
    headers: list[tuple[bytes, bytes]],
    limit: int,
    timeout_secs: float | None = None,
) -> bytes:
    declared = declared_length(headers)
    if declared is not None and declared > limit:
        # Refuse before reading: with `Expect: 100-continue` the client never even sends it.
        raise BodyTooLargeError(limit)
    if timeout_secs is None or timeout_secs <= 0:
        return await _read(receive, limit)
    try:
        async with asyncio.timeout(timeout_secs):
            return await _read(receive, limit)
    except TimeoutError:
        raise BodyTimeoutError(timeout_secs) from None


async def _read(receive: Receive, limit: int) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError("client disconnected before the body was complete")
        chunk = message.get("body", b"")
        if chunk:
            if len(body) + len(chunk) > limit:
                raise BodyTooLargeError(limit)
            body += chunk
        if not message.get("more_body", False):
            return bytes(body)
