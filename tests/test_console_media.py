"""Media the console links to, as the real gateway serves it from its media store: anyone who
can text the number chooses its bytes and type, so only pictures, audio and video are shown
inline; everything else (HTML, SVG, PDF, text, ...) is a download."""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp

from smsbridge.media_store import MediaStore
from tests.console_harness import console_config
from tests.harness import free_port

INLINE = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "audio/mpeg")
DOWNLOAD = (
    "text/html",
    "image/svg+xml",
    "application/pdf",
    "text/plain",
    "application/xhtml+xml",
    "text/xml",
    "application/octet-stream",
)


def store(root: Path, content_type: str, file_name: str | None) -> str:
    media = MediaStore(root)
    data = f"<html><script>alert('{content_type}')</script></html>".encode()
    temp = media.temp_path()
    temp.write_bytes(data)
    stored = media.commit(
        temp,
        content_type=content_type,
        file_name=file_name,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    return stored.key


async def test_only_pictures_audio_and_video_are_served_inline(
    amqp_url: str, ledger_url: str, tmp_path: Path
) -> None:
    from gateway.app import serve as serve_gateway

    config = console_config(amqp_url, ledger_url, tmp_path, gateway_port=free_port())
    cases = [(t, "f.bin") for t in INLINE + DOWNLOAD] + [
        ("video/mp4; codecs=avc1", None),
        ("Text/HTML; charset=utf-8", None),
    ]
    keys = {store(config.media.dir, t, name): (t, name) for t, name in cases}
    gateway = await serve_gateway(config)
    try:
        async with aiohttp.ClientSession() as session:
            for key, (content_type, name) in keys.items():
                async with session.get(f"{config.gateway.base_url}/media/{key}") as response:
                    assert response.status == 200
                    headers = response.headers
                    disposition = headers.get("Content-Disposition", "")
                    kind = content_type.split(";")[0].strip().lower()
                    shown = kind in INLINE or kind.startswith(("audio/", "video/"))
                    if shown:
                        assert not disposition.startswith("attachment"), (content_type, headers)
                    else:
                        assert disposition.startswith("attachment"), (content_type, headers)
                    if name:
                        assert f'filename="{name}"' in disposition
                    assert headers["X-Content-Type-Options"] == "nosniff"
                    assert headers["Content-Security-Policy"] == "sandbox"
    finally:
        await gateway.cleanup()
