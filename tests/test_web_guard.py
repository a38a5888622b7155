"""The launched app refuses uploads a foreign web page sends, and bounds upload size."""

from pathlib import Path

import httpx

from studio.web_guard import is_cross_site


def _upload(url: str, data: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    files = {"files": ("picture.png", data, "image/png")}
    return httpx.post(url + "gradio_api/upload", files=files, headers=headers or {}, timeout=60)


def _cached_files(app) -> set[Path]:
    cache = app.log.parent / "gradio-cache"  # GRADIO_TEMP_DIR of the test app (tests/app_server.py)
    return {p for p in cache.rglob("*") if p.is_file()} if cache.exists() else set()


def test_a_foreign_page_cannot_upload_but_scripts_and_the_own_page_can(studio_running_app):
    app = studio_running_app
    host = app.url.split("//", 1)[1].rstrip("/")
    before = _cached_files(app)

    refused = _upload(app.url, b"x" * 1000, {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert refused.status_code == 403 and "another web site" in refused.text
    assert _upload(app.url, b"x" * 1000, {"Origin": "null"}).status_code == 403
    assert _cached_files(app) == before  # nothing of the refused uploads reached the disk

    assert _upload(app.url, b"y" * 1000, {"Origin": f"http://{host}"}).status_code == 200  # Studio's own page
    assert _upload(app.url, b"z" * 1000).status_code == 200  # gradio_client and scripts send no Origin


def test_uploads_over_the_limit_are_refused(studio_running_app):
    response = _upload(studio_running_app.url, b"\0" * (65 * 1024 * 1024))
    assert response.status_code in (413, 400) and "size" in response.text.lower()


def test_cross_site_rules():
    def headers(**values):
        return [(k.replace("_", "-").encode(), v.encode()) for k, v in values.items()]

    assert not is_cross_site(headers(host="127.0.0.1:7860"))
    assert not is_cross_site(headers(host="127.0.0.1:7860", origin="http://127.0.0.1:7860"))
    assert is_cross_site(headers(host="127.0.0.1:7860", origin="http://localhost:7860"))  # another origin
    assert is_cross_site(headers(host="127.0.0.1:7860", origin="http://127.0.0.1:7860", sec_fetch_site="cross-site"))
    assert not is_cross_site(
        headers(host="127.0.0.1:7860", origin="https://x.gradio.live", x_forwarded_host="x.gradio.live")
    )


def _guarded_app():
    """Studio's middleware in front of a tiny Starlette app that counts the writes reaching it."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from studio.web_guard import SameOriginWrites

    reached = []

    async def upload(request):
        reached.append(await request.body())
        return PlainTextResponse("stored")

    app = Starlette(routes=[Route("/upload", upload, methods=["POST"])], middleware=[Middleware(SameOriginWrites)])
    return app, reached


def test_a_share_link_accepts_its_own_page_and_refuses_other_origins_even_with_a_forged_forwarded_host():
    from starlette.testclient import TestClient

    app, reached = _guarded_app()
    share = "abc123.gradio.live"
    with TestClient(app, base_url=f"https://{share}") as client:
        post = lambda **headers: client.post("/upload", content=b"data", headers=headers)  # noqa: E731
        # A --share page: the tunnel keeps the public Host; browsers may write it with the https port or in capitals.
        assert post(origin=f"https://{share}", **{"sec-fetch-site": "same-origin"}).status_code == 200
        assert post(origin=f"https://{share.upper()}", host=f"{share}:443").status_code == 200
        # Another site, an old browser without Sec-Fetch-Site, and a forged X-Forwarded-Host (gradio's CORS lets
        # any origin's preflight through on a public host, so a foreign page can add that header).
        assert post(origin="https://evil.example", **{"x-forwarded-host": "evil.example"}).status_code == 403
        assert post(origin=f"https://{share}.evil.example").status_code == 403
    assert len(reached) == 2

    # Behind a reverse proxy on this machine, Host is the loopback address and X-Forwarded-Host names the page.
    with TestClient(app, base_url="http://127.0.0.1:7860") as client:
        proxied = client.post(
            "/upload", content=b"data", headers={"origin": f"https://{share}", "x-forwarded-host": share}
        )
        assert proxied.status_code == 200
        refused = client.post("/upload", content=b"data", headers={"origin": "https://evil.example"})
        assert refused.status_code == 403 and "another web site" in refused.text
        assert client.get("/upload").status_code == 405  # reads pass the guard untouched
    assert len(reached) == 3
