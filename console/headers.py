"""Security headers on every answer of the console (pages, API, static files and errors).

The CSP allows scripts and styles from the console only (no inline script or style: htmx is
configured not to inject its own), images from the console and from the gateway's
`/media/<key>` (inbound MMS shown inline), and no framing. Pages and API answers are never
cached: they show messages.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

STATIC_PREFIX = "/static/"


def policy(media_origin: str) -> str:
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src 'self' {media_origin}",
            "connect-src 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ]
    )


def secure_headers(
    media_origin: str,
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    csp = policy(media_origin)

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        headers["Content-Security-Policy"] = csp
        headers["X-Frame-Options"] = "DENY"
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
        if request.path.startswith(STATIC_PREFIX):
            headers.setdefault("Cache-Control", "public, max-age=86400")
        else:
            headers["Cache-Control"] = "no-store"

    return on_prepare
