"""A read deadline and a byte cap for every request body (slow-loris guard).

uvicorn has no body read timeout (``timeout_keep_alive`` only covers the idle time between
requests), and Starlette reads a JSON body for as long as the client keeps sending, so a client
trickling one byte a second holds a request — and its connection and task — open indefinitely.
The post-call webhook has always read its body through ``read_capped_body`` under
``intake_body_timeout_secs`` (it answers 408 itself, in its own metrics). This pure ASGI
middleware gives every other route the same guard: it reads the whole body first, under
``request_body_timeout_secs`` and ``max_body_bytes``, answers 408 / 413 / 400 itself, and hands
the route a receive channel that replays the buffered body.

Requests without a body (no Content-Length, no Transfer-Encoding, e.g. a GET) pass untouched.
"""

from __future__ import annotations

import json

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.security.body import (
    BadContentLengthError,
    BodyTimeoutError,
    BodyTooLargeError,
    ClientDisconnectedError,
    read_capped_body,
)

log = structlog.get_logger("voxmem.http")

# Read by the route itself, streamed under its own cap and deadline (api/routes/webhooks.py).
OWN_BODY_READERS = ("/webhook/post-call",)


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
    return False


class BodyDeadlineMiddleware:
    def __init__(self, app: ASGIApp, *, timeout_secs: float, max_bytes: int) -> None:
        self.app = app
        self.timeout_secs = timeout_secs
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not _has_body(scope.get("headers", []))
            or str(scope.get("path", "")).endswith(OWN_BODY_READERS)
        ):
            await self.app(scope, receive, send)
            return
        try:
            body = await read_capped_body(
                receive, scope.get("headers", []), self.max_bytes, self.timeout_secs
            )
        except BodyTimeoutError as exc:
            log.warning("http.body_timeout", path=scope.get("path"), timeout_secs=self.timeout_secs)
            await _answer(send, 408, str(exc))
            return
        except BodyTooLargeError as exc:
            await _answer(send, 413, str(exc))
            return
        except BadContentLengthError as exc:
            await _answer(send, 400, str(exc))
            return
        except ClientDisconnectedError:
            return  # nobody is left to answer

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            # After the body, the real channel: it reports the client's disconnect.
            return await receive()

        await self.app(scope, replay, send)


async def _answer(send: Send, status: int, detail: str) -> None:
    payload = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                # The rest of the body may still be on its way: do not reuse this connection.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
