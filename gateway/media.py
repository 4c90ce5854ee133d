"""GET /media/<key>: inbound MMS media stored by the media worker, for the PBX to fetch."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.state import MEDIA_STORE


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
    if meta.file_name:
        safe = meta.file_name.replace('"', "").replace("\\", "")
        headers["Content-Disposition"] = f'inline; filename="{safe}"'
    return web.FileResponse(path, headers=headers)
