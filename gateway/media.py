"""GET /media/<key>: inbound MMS media stored by the media worker, for the PBX to fetch.

Anyone who can text the number chooses what is served here: only pictures, audio and video
are shown inline (the console's <img> and links); anything else (HTML, SVG, PDF, text) is a
download, so even a link opened in a tab never renders it as a page.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.state import MEDIA_STORE

INLINE_IMAGES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp"})


def shown_inline(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind in INLINE_IMAGES or kind.startswith(("audio/", "video/"))


async def serve_media(request: web.Request) -> web.StreamResponse:
    store = request.app[MEDIA_STORE]
    key = request.match_info["key"]
    if not store.is_valid_key(key):
        raise web.HTTPNotFound(text="unknown media\n")
    found = await asyncio.to_thread(store.get, key)
    if found is None:
        raise web.HTTPNotFound(text="unknown media\n")
    path, meta = found
    headers = {
        "Content-Type": meta.content_type,
        "X-Content-Type-Options": "nosniff",
        # Media is untrusted content from anyone who can text the number.
        "Content-Security-Policy": "sandbox",
        "Cache-Control": "private, max-age=86400",
        "ETag": f'"{meta.sha256}"',
    }
    disposition = "inline" if shown_inline(meta.content_type) else "attachment"
    if meta.file_name:
        safe = meta.file_name.replace('"', "").replace("\\", "")
        disposition += f'; filename="{safe}"'
    headers["Content-Disposition"] = disposition
    return web.FileResponse(path, headers=headers)
