"""A web application's released static build, served as files: relocated, precompressed, cached.

A single-page application built for the root of a site (its bundler's public path ``/``) is
moved under a path of this server by :func:`relocate`, which rewrites the few places where the
build names that path (the HTML page's script and link tags, CSS ``url()``, the web manifest, the
bundler's runtime); :func:`precompress` writes a gzip and, where the ``brotli`` module is
installed, a brotli copy beside every file worth compressing, once, at install time.

:class:`BuildFiles` serves the files (an ASGI app mounted under the relocated path): the
precompressed copy when the client accepts its encoding (RFC 9110 8.4, 12.5.3), a year of
``immutable`` caching for files whose names carry their content hash (RFC 9111 5.2.2.1, RFC 8246)
and ``no-cache`` with an ETag for the rest, ``application/wasm`` for WebAssembly (which
``WebAssembly.instantiateStreaming`` insists on).
"""

from __future__ import annotations

import gzip
import mimetypes
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from typing import Any

from starlette.responses import FileResponse, PlainTextResponse, Response

try:  # optional: brotli is a few percent smaller than gzip on the viewer's bundles
    import brotli
except ImportError:  # pragma: no cover - gzip alone then
    brotli = None

GZIP_LEVEL = 9
BROTLI_QUALITY = 9  # 11 is ~8 % smaller and twenty times slower (36 s for the largest bundle)
MIN_COMPRESS_BYTES = 1024
WORTH_IT = 0.9  # a compressed copy is kept only when at most this fraction of the original
COMPRESSIBLE = {".js", ".mjs", ".css", ".html", ".json", ".wasm", ".svg", ".txt", ".xml", ".webapp", ".ico",
                ".map", ".ttf", ".otf"}
ENCODINGS = (("br", ".br"), ("gzip", ".gz"))  # preferred first, when the client accepts both equally
YEAR_SECONDS = 365 * 24 * 3600
IMMUTABLE = f"public, max-age={YEAR_SECONDS}, immutable"
REVALIDATE = "no-cache"  # may be stored, but asked again (a 304 when unchanged)
# A content hash in the name: app.bundle.0f6159c501addfe9.js, 5130ccb17e3f3f5b.wasm.
HASHED_NAME = re.compile(r"(^|[.-])[0-9a-f]{16,}\.[a-z0-9]+$")
MEDIA_TYPES = {
    ".wasm": "application/wasm",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".webapp": "application/x-web-app-manifest+json",
    ".woff2": "font/woff2",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
}


class RelocationError(Exception):
    """The build does not look as expected: its public path could not be rewritten."""


# -- at install ---------------------------------------------------------------------------------

def relocate(folder: Path, prefix: str, *, runtime_marker: str) -> int:
    """Make a build made for ``/`` load its files from ``prefix`` (``/viewer/static/``).

    The page's ``src="/…"``, ``href="/…"`` and ``window.PUBLIC_URL="/"``; CSS ``url(/…)``; the
    web manifest's icon paths; and in every script the bundler's runtime line ``runtime_marker``
    (its public path, e.g. ``__webpack_require__.p = "/";``). Returns how many scripts held the
    runtime line; none is an error (the build is not the one expected)."""
    if not (prefix.startswith("/") and prefix.endswith("/")):
        raise ValueError(f"{prefix!r}: a path that starts and ends with /")
    page = folder / "index.html"
    html = page.read_text(encoding="utf-8")
    moved = re.sub(r'\b(src|href)="/(?!/)', rf'\1="{prefix}', html)
    moved = moved.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{prefix}"')
    if f'window.PUBLIC_URL="{prefix}"' not in moved:
        raise RelocationError(f"{page} does not set window.PUBLIC_URL: not the build expected")
    page.write_text(moved, encoding="utf-8")
    for css in folder.rglob("*.css"):
        text = css.read_text(encoding="utf-8")
        css.write_text(re.sub(r"url\((['\"]?)/(?!/)", rf"url(\1{prefix}", text), encoding="utf-8")
    manifest = folder / "manifest.json"
    if manifest.is_file():
        text = manifest.read_text(encoding="utf-8")
        manifest.write_text(re.sub(r'"src":\s*"/(?!/)', f'"src": "{prefix}', text), encoding="utf-8")
    target = runtime_marker.replace('"/"', f'"{prefix}"')
    runtimes = 0
    for script in folder.rglob("*.js"):
        data = script.read_bytes()
        if runtime_marker.encode() in data:
            script.write_bytes(data.replace(runtime_marker.encode(), target.encode()))
            runtimes += 1
    if not runtimes:
        raise RelocationError(f"no script in {folder} sets the public path ({runtime_marker!r}): "
                              "not the build expected")
    return runtimes


def _compress(path: Path) -> None:
    data = path.read_bytes()
    limit = len(data) * WORTH_IT
    packed = gzip.compress(data, GZIP_LEVEL, mtime=0)
    if len(packed) <= limit:
        path.with_name(path.name + ".gz").write_bytes(packed)
    if brotli is not None:
        packed = brotli.compress(data, quality=BROTLI_QUALITY)
        if len(packed) <= limit:
            path.with_name(path.name + ".br").write_bytes(packed)


def compressible(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in COMPRESSIBLE and path.stat().st_size >= MIN_COMPRESS_BYTES:
            yield path


def precompress(folder: Path, *, workers: int | None = None) -> int:
    """A ``.gz`` (and ``.br``) copy beside each compressible file of ``folder`` that shrinks by at
    least a tenth; the largest first, on every core (zlib and brotli release the GIL). Returns
    how many files were compressed."""
    paths = sorted(compressible(folder), key=lambda p: p.stat().st_size, reverse=True)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        list(pool.map(_compress, paths))
    return len(paths)


# -- serving ------------------------------------------------------------------------------------

def accepted_encodings(header: str | None) -> list[str]:
    """The content codings of ``Accept-Encoding`` the client takes, best first (RFC 9110 12.5.3);
    ``q=0`` refuses one, ``*`` stands for the rest. Among codings of equal quality ours come in
    the order of :data:`ENCODINGS` (browsers send ``gzip, deflate, br``: brotli is smaller)."""
    preference = {name: rank for rank, (name, _) in enumerate(ENCODINGS)}
    ranked: list[tuple[float, int, int, str]] = []
    named: set[str] = set()
    for position, item in enumerate((header or "").split(",")):
        name, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        name = name.strip().lower()
        if name:
            named.add(name)
            if quality > 0:
                ranked.append((-quality, preference.get(name, len(preference)), position, name))
    names = [name for *_, name in sorted(ranked)]
    if "*" in names:  # the codings not named otherwise, refused ones included
        names[names.index("*"):names.index("*") + 1] = [e for e, _ in ENCODINGS if e not in named]
    return names


def media_type(path: Path) -> str:
    return MEDIA_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def cache_control(name: str) -> str:
    return IMMUTABLE if HASHED_NAME.search(name) else REVALIDATE


def file_response(path: Path, request_headers: dict[str, str], *, cache: str | None = None) -> Response:
    """``path``, or its precompressed copy the client accepts, with caching headers; 304 when
    ``If-None-Match`` names the copy's ETag (RFC 9110 13.1.2)."""
    chosen, encoding = path, None
    variants = [(name, path.with_name(path.name + suffix)) for name, suffix in ENCODINGS]
    present = {name: copy for name, copy in variants if copy.is_file()}
    for name in accepted_encodings(request_headers.get("accept-encoding")):
        if name in present:
            chosen, encoding = present[name], name
            break
        if name == "identity":
            break
    stat = chosen.stat()
    etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}{"-" + encoding if encoding else ""}"'
    headers = {"Cache-Control": cache or cache_control(path.name), "ETag": etag,
               "X-Content-Type-Options": "nosniff"}
    if present:
        headers["Vary"] = "Accept-Encoding"
    if encoding:
        headers["Content-Encoding"] = encoding
    if etag in [tag.strip() for tag in request_headers.get("if-none-match", "").split(",")]:
        return Response(status_code=HTTPStatus.NOT_MODIFIED, headers=headers)
    return FileResponse(chosen, headers=headers, media_type=media_type(path), stat_result=stat)


def safe_relative(path: str) -> str | None:
    """``path`` (below a mount) if it names a file below the folder: no ``..``, no hidden or empty
    parts, no backslashes; else None."""
    parts = path.strip("/").split("/")
    if not path.strip("/") or "\\" in path or "\x00" in path or any(p in ("", ".", "..") or p.startswith(".")
                                                                   for p in parts):
        return None
    return "/".join(parts)


Folders = Callable[[dict[str, Any]], Iterable[Path]]


class BuildFiles:
    """ASGI app: the files of the folders ``folders(scope)`` names (the first that has a path
    wins), GET and HEAD; everything else 404 or 405. ``hidden`` names files not served here
    (the page itself, which its route serves with the permission it needs)."""

    def __init__(self, folders: Folders, *, hidden: frozenset[str] = frozenset()) -> None:
        self.folders = folders
        self.hidden = hidden

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        assert scope["type"] == "http"
        if scope["method"] not in ("GET", "HEAD"):
            response: Response = PlainTextResponse("GET or HEAD only", status_code=HTTPStatus.METHOD_NOT_ALLOWED,
                                                   headers={"Allow": "GET, HEAD"})
        else:
            response = self.response(scope)
        await response(scope, receive, send)

    def response(self, scope: dict[str, Any]) -> Response:
        root_path = scope.get("root_path", "")
        path = scope["path"][len(root_path):] if scope["path"].startswith(root_path) else scope["path"]
        relative = safe_relative(path)
        if relative is not None and relative not in self.hidden:
            for base in self.folders(scope):
                candidate = base / relative
                if candidate.is_file():
                    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
                    return file_response(candidate, headers)
        return PlainTextResponse("no such file", status_code=HTTPStatus.NOT_FOUND,
                                 headers={"Cache-Control": REVALIDATE})
