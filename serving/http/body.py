"""Request bodies: size-limited reads and the upload containers a study arrives in."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncGenerator, Mapping

from fastapi import Request
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType, UploadTimeout
from serving.imaging.dicom import unzip_series
from serving.schema.cluster import Limits


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """Read the body, refusing early (413) by Content-Length and again while streaming, and
    408 once it has taken `timeout_s` (the upload's own deadline: processing starts after)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidInput("Content-Length is not a number")
        if int(declared) > limit:
            raise PayloadTooLarge(f"request body over the {limit} byte limit")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body over the {limit} byte limit")
                chunks.append(chunk)
    except TimeoutError:
        raise UploadTimeout(f"request body not received within {timeout_s:g} s") from None
    if size == 0:
        raise InvalidInput("empty request body")
    return b"".join(chunks)


class BodyTooLarge(HTTPException):
    """413 raised from inside `receive`. FastAPI re-raises an HTTPException from its own body
    read (anything else there becomes a generic 400), so the one error mapping answers it."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the {limit} byte limit")


class JSONBodyLimit:
    """Per-route limit for bodies that FastAPI reads and parses itself (JSON models).

    Routes that read their body with `read_body` bound it there; FastAPI reads a model's body
    whole before any handler or dependency runs, so the limit has to sit in `receive`: it
    refuses by Content-Length before the first byte and counts bytes as they arrive (chunked
    uploads have no Content-Length), so an oversized body is never held in memory.
    """

    def __init__(self, app: ASGIApp, limits: Mapping[str, int]) -> None:
        self.app = app
        self.limits = dict(limits)  # exact request path -> byte limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limits.get(scope.get("path", "")) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        received = 0

        async def limited() -> Message:
            nonlocal received
            if declared.isdigit() and int(declared) > limit:
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited, send)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo `Content-Encoding: gzip | deflate` (tritonclient's request compression), bounded."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType("unsupported Content-Encoding; use gzip or deflate")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise InvalidInput(f"body is not valid {encoding} data") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed request body over the {limit} byte limit")
    return out


async def _replay(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


async def study_parts(request: Request, content_type: str, limits: Limits) -> list[bytes]:
    """The DICOM/PNG instances in a request: one body, a zip, or multipart file fields."""
    is_series = content_type in ("application/zip", "multipart/form-data")
    body = await read_body(
        request, limits.max_series_bytes if is_series else limits.max_instance_bytes,
        limits.upload_timeout_s,
    )
    if content_type == "application/zip":
        return unzip_series(body, limits.max_series_instances, limits.max_series_bytes)
    if content_type != "multipart/form-data":
        return [body]
    parser = MultiPartParser(
        request.headers, _replay(body),
        max_files=limits.max_series_instances, max_fields=16, max_part_size=1 << 20,
    )
    try:
        form = await parser.parse()
    except MultiPartException:
        raise InvalidInput("malformed multipart body") from None
    files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    if not files:
        raise InvalidInput("multipart body holds no file parts")
    try:
        return [await f.read() for f in files]
    finally:
        await form.close()


def split_related(body: bytes, boundary: str, max_parts: int) -> list[tuple[str, bytes]]:
    """(content type, content) of each part of a multipart body (RFC 2046 5.1.1): split on
    the delimiter with bytes.find, so a 500 MB series costs one copy, not a line-by-line
    parse. A part without a Content-Type gets ''."""
    delimiter = b"--" + boundary.encode("latin-1")
    pos = body.find(delimiter)
    if pos < 0 or (pos > 0 and body[pos - 2:pos] != b"\r\n"):
        raise InvalidInput("malformed multipart/related body: no opening boundary")
    parts: list[tuple[str, bytes]] = []
    while True:
        pos += len(delimiter)
        if body[pos:pos + 2] == b"--":  # the close delimiter
            return parts
        eol = body.find(b"\r\n", pos)
        end = body.find(b"\r\n" + delimiter, eol)
        if eol < 0 or end < 0 or body[pos:eol].strip(b" \t"):
            raise InvalidInput("malformed multipart/related body: a part is not closed")
        if len(parts) >= max_parts:
            raise PayloadTooLarge(f"more than {max_parts} instances")
        part = body[eol + 2:end]
        head, sep, content = (b"", b"", part[2:]) if part.startswith(b"\r\n") else \
            part.partition(b"\r\n\r\n")
        if not sep and head:
            raise InvalidInput("malformed multipart/related body: a part has no header end")
        ctype = ""
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-type":
                ctype = value.decode("latin-1").split(";")[0].strip().lower()
        parts.append((ctype, content))
        pos = end + 2


async def related_parts(request: Request, limits: Limits) -> list[bytes]:
    """The DICOM instances of a STOW-RS body (`multipart/related; type="application/dicom"`,
    PS3.18 10.5), each part `application/dicom`; bounded like a series upload."""
    params = {
        k.strip().lower(): v.strip().strip('"')
        for k, _, v in (p.partition("=") for p in request.headers.get("content-type", "")
                        .split(";")[1:])
    }
    if media_type(request) != "multipart/related" or params.get("type", "application/dicom"
                                                                ).lower() != "application/dicom":
        raise UnsupportedMediaType('STOW-RS takes multipart/related; type="application/dicom"')
    if not params.get("boundary"):
        raise InvalidInput("multipart/related body without a boundary")
    body = await read_body(request, limits.max_series_bytes, limits.upload_timeout_s)
    parts = split_related(body, params["boundary"], limits.max_series_instances)
    if not parts:
        raise InvalidInput("multipart/related body holds no parts")
    for index, (ctype, content) in enumerate(parts):
        if ctype not in ("application/dicom", ""):
            raise UnsupportedMediaType(f"part {index}: each part must be application/dicom")
        if not content:
            raise InvalidInput(f"part {index}: empty")
    return [content for _, content in parts]
