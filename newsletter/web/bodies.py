"""Reading a POST body with a size limit, whether or not it has a Content-Length.

A chunked body (`Transfer-Encoding: chunked`) announces no length, so a
check of the header alone lets it through; Starlette's form parser would then
read all of it.  `buffered` counts the bytes as they arrive and stops at the
limit, and hands back a request that replays the body to the form parser.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import Message


async def buffered(request: Request, limit: int) -> Request | None:
    """`request` with its body read now, or None once it is over `limit` bytes."""
    if int(request.headers.get("content-length") or 0) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None  # stop reading: the rest never reaches memory
        chunks.append(chunk)
    body = b"".join(chunks)

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, replay)
