"""What the web server needs beyond gradio's defaults: refuse writes from other sites, keep uploads bounded.

Gradio's CORS layer only withholds response headers; a form on any web page can still POST a multipart upload
to a Studio on localhost (a "simple" request: no preflight). Browsers always send `Origin` (and
`Sec-Fetch-Site`) with such a POST, so a write whose origin is not this server's own host is refused before
gradio reads a byte of it. Scripts (gradio_client, curl) send no Origin and are unaffected.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

MAX_UPLOAD = "64mb"
"""Largest file the browser or the API may upload (gradio's `max_file_size`): a big PNG, not a disk filler."""

UPLOAD_CLEANUP = (600, 3600)
"""gradio's `delete_cache`: every 10 minutes, delete uploaded and cached files older than an hour."""

_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class SameOriginWrites:
    """ASGI middleware: 403 for POST/PUT/PATCH/DELETE that a browser sends on behalf of another site."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] not in _SAFE_METHODS and is_cross_site(scope["headers"]):
            body = b"Refused: this request comes from another web site. Open Studio's own page instead."
            await send({"type": "http.response.start", "status": 403, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def is_cross_site(raw_headers: list[tuple[bytes, bytes]]) -> bool:
    headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in raw_headers}
    if headers.get("sec-fetch-site") == "cross-site":
        return True
    origin = headers.get("origin")
    if origin is None:
        return False  # not a browser acting for a page: scripts and gradio_client
    if origin == "null":
        return True  # sandboxed iframes and local files: never Studio's own page
    scheme = urlsplit(origin).scheme
    own = {_host_port(headers.get("host", ""), scheme)}
    # A reverse proxy on this machine (nginx, a tunnel) may rewrite Host to the loopback address and name the public
    # host in X-Forwarded-Host. Trust that header only then: when Host is public (a --share link, a LAN address)
    # gradio's CORS answers every origin's preflight, so a foreign page could send an X-Forwarded-Host of its own.
    forwarded = headers.get("x-forwarded-host", "").split(",")[0].strip()
    if forwarded and next(iter(own))[0] in _LOOPBACK:
        own.add(_host_port(forwarded, scheme))
    return _host_port(urlsplit(origin).netloc, scheme) not in own


_LOOPBACK = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_port(netloc: str, scheme: str) -> tuple[str, int | None]:
    """`X.gradio.live`, `x.gradio.live:443` (for https) and `x.gradio.live` are one host."""
    try:
        parts = urlsplit(f"//{netloc}")
        return (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:  # a port that is not a number
        return netloc.lower(), None


def private_upload_folder(port: int) -> Path:
    """An empty folder for gradio's uploads and file cache, emptied of what a killed earlier run left.

    One folder per port: two servers cannot share a port, so what is there belongs to a run that is gone.
    """
    folder = Path(tempfile.gettempdir()) / f"studio-gradio-{port}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700, parents=True)
    return folder
