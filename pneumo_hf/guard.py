"""What the public Space refuses or bounds before any model work: request bodies, files it did not receive, how many
films are decoded and predicted at once; and the headers of every answer. docs/app.md gives the limits and the peaks
measured under them.

    demo.launch(app_kwargs={"middleware": [guard.middleware()]})      # bodies and headers
    with guard.model_slot():                                          # at most PNEUMO_MAX_CONCURRENT at once
        path = guard.uploaded(film, roots)                            # the one sentence for any other path
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from starlette.middleware import Middleware

from .errors import UserError

__all__ = ["BusyError", "NotUploadedError", "RequestGuard", "middleware", "model_slot", "uploaded"]

# Films go through Gradio's upload (bounded by launch(max_file_size=...)); every other body is a few references and
# flags, or an MCP tool call whose film is a base64 data URI (8 MB holds a 6 MB film).
MAX_BODY_BYTES = int(os.environ.get("PNEUMO_MAX_BODY_BYTES", 8 * 2**20))
UPLOAD_ROUTES = ("/gradio_api/upload", "/upload")
CALL_ROUTES = ("/gradio_api/run/", "/gradio_api/call/", "/gradio_api/queue/join", "/gradio_api/api/")
MAX_CONCURRENT = int(os.environ.get("PNEUMO_MAX_CONCURRENT", 2))  # one per core of a free Space
BUSY_SECONDS = float(os.environ.get("PNEUMO_BUSY_SECONDS", 60))
HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    # the Hub shows a Space inside its own page: huggingface.co frames *.hf.space
    (b"content-security-policy", b"frame-ancestors 'self' https://huggingface.co https://*.huggingface.co https://*.hf.space"),
]
NOT_UPLOADED = "Only a file uploaded to this Space can be read: upload the film first (gradio_client: handle_file(path))."
BUSY = "The Space is busy with other films; try again in a minute."

_slots = threading.BoundedSemaphore(MAX_CONCURRENT)


class NotUploadedError(UserError):
    """A path the visitor did not upload."""


class BusyError(UserError):
    """Every model slot stayed taken for PNEUMO_BUSY_SECONDS."""


def uploaded(path: Any, roots: Sequence[Path]) -> str:
    """`path` when it names a file under one of `roots` (Gradio's upload cache, the served examples), else
    `NotUploadedError` with one sentence, the same whether the path exists, is a folder, is unreadable or is an image:
    nothing outside `roots` is looked at (the check is on the name; the link-resolving one only inside a root)."""
    if not isinstance(path, str) or not path or len(path) > 4096 or "\0" in path:
        raise NotUploadedError(NOT_UPLOADED)
    named = os.path.abspath(path)
    resolved_roots = [os.path.realpath(root) for root in roots]
    inside = [root for root in resolved_roots if named.startswith(root + os.sep)]
    if not inside or not os.path.realpath(named).startswith(inside[0] + os.sep) or not os.path.isfile(named):
        raise NotUploadedError(NOT_UPLOADED)
    return named


@contextmanager
def model_slot() -> Iterator[None]:
    """One of PNEUMO_MAX_CONCURRENT slots for decoding and predicting, shared by every endpoint, queued or not; a
    request waits up to PNEUMO_BUSY_SECONDS, then gets `BusyError`."""
    if not _slots.acquire(timeout=BUSY_SECONDS):
        raise BusyError(BUSY)
    try:
        yield
    finally:
        _slots.release()


class RequestGuard:
    """ASGI middleware: the security headers on every answer, and 413 for a body over `max_body_bytes` on any route
    but the upload, refused by its Content-Length before a byte is read, or as soon as a streamed body passes it. A
    call's JSON naming a file outside `roots()` (the upload cache, the examples) gets NOT_UPLOADED before Gradio sees
    it: Gradio's own refusal quotes the path, made absolute with the server's working directory. No answer quotes the
    request."""

    def __init__(self, app, max_body_bytes: int = MAX_BODY_BYTES, roots=None):
        self.app, self.max_body_bytes, self.roots = app, max_body_bytes, roots

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_with_headers(message):
            nonlocal started
            if message["type"] == "http.response.start":
                if started:
                    return
                started = True
                message = {**message, "headers": [*message.get("headers", []), *HEADERS]}
            elif started == "refused":
                return
            await send(message)

        if scope["path"].rstrip("/").endswith(UPLOAD_ROUTES):
            return await self.app(scope, receive, send_with_headers)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await self._refuse(send_with_headers)
        if self.roots is not None and scope["method"] == "POST" and any(route in scope["path"] for route in CALL_ROUTES):
            return await self._checked_call(scope, receive, send_with_headers)
        received = 0

        async def bounded_receive():
            nonlocal received, started
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    if not started:
                        await self._refuse(send_with_headers)
                    started = "refused"
                    return {"type": "http.disconnect"}
            return message

        return await self.app(scope, bounded_receive, send_with_headers)

    async def _checked_call(self, scope, receive, send):
        """Read the call's body whole (bounded), refuse it when it names a file outside the roots, else replay it."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body_bytes:
                return await self._refuse(send)
        body = b"".join(chunks)
        try:
            named = list(_file_paths(json.loads(body)))
        except ValueError:  # not JSON: Gradio answers it
            named = []
        roots = self.roots()
        for path in named:
            try:
                uploaded(path, roots)
            except NotUploadedError:
                answer = json.dumps({"error": NOT_UPLOADED}).encode()
                await send({"type": "http.response.start", "status": 400, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
                return await send({"type": "http.response.body", "body": answer})
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, send):
        body = json.dumps({"error": f"The request body is over {self.max_body_bytes // 2**20} MB; send films through the upload (gradio_client: handle_file(path))."}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _file_paths(value: Any) -> Iterator[Any]:
    """Every `path` of a file reference (a dict with a "path") anywhere in a call's JSON."""
    if isinstance(value, dict):
        if "path" in value:
            yield value["path"]
        for item in value.values():
            yield from _file_paths(item)
    elif isinstance(value, list):
        for item in value:
            yield from _file_paths(item)


def middleware(roots=None, max_body_bytes: int = MAX_BODY_BYTES) -> Middleware:
    """The guard as FastAPI takes it: `demo.launch(app_kwargs={"middleware": [middleware(roots)]})`, `roots` a function
    giving the folders a call's files may be in."""
    return Middleware(RequestGuard, max_body_bytes=max_body_bytes, roots=roots)
