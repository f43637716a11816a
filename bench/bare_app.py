"""The baseline for bench_intake: a bare FastAPI endpoint returning 200 under the same server
settings, so the intake figures can be read as a ratio to what the stack itself costs."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

app = FastAPI()
_OK = b'{"status":"accepted"}'


@app.post("/webhook/post-call")
async def bare(request: Request) -> Response:
    await request.body()
    return Response(_OK, media_type="application/json")
