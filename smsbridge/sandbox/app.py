"""``Sandbox``: a Flowroute look-alike HTTP server on loopback, and ``serve`` for the CLI."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import aiohttp
import structlog
from aiohttp import web

from .api import AcceptedMessage, AccountSpec, CallbackKind, Fault, FlowrouteApi, ReceiptPost
from .control import add_control_routes
from .inbound import InboundKind, InboundMedia, InboundResult, deliver, parse_media
from .media import MediaStore, media_bytes
from .payloads import Form, MediaSpec, inbound_mms, inbound_sms, media_id, new_message_id

__all__ = ["DEFAULT_ACCOUNT", "AccountSpec", "Sandbox", "serve"]

DEFAULT_ACCOUNT = AccountSpec("sandbox-access", "sandbox-secret")

Accounts = Mapping[str, AccountSpec] | Iterable[AccountSpec]


def _accounts(accounts: Accounts | None) -> dict[str, AccountSpec]:
    if accounts is None:
        return {DEFAULT_ACCOUNT.access_key: DEFAULT_ACCOUNT}
    specs = accounts.values() if isinstance(accounts, Mapping) else accounts
    out = {spec.access_key: spec for spec in specs}
    if not out:
        raise ValueError("at least one account is needed")
    return out


class Sandbox:
    """A Flowroute look-alike on ``http://host:port``: messages API, media, faults, webhooks.

    ``async with Sandbox() as sb:`` binds a free loopback port; ``sb.api_url`` is the
    ``/v2.2`` base to give the bridge, ``sb.url`` the root (media and ``/_sandbox/`` control).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        accounts: Accounts | None = None,
        resend_interval: float = 30.0,
        resend_attempts: int = 5,
        dlr_delay: float = 0.05,
        dlr_status: str = "delivery success",
        dlr_status_code: int | str | None = 1000,
        dlr_description: str | None = None,
        dlr_form: Form = "jsonapi",
        rate_limit_retry_after: str | None = None,
        post_timeout: float = 10.0,
        client_max_size: int = 4 << 20,
    ) -> None:
        self.host = host
        self.port = port
        self.resend_interval = resend_interval
        self.resend_attempts = resend_attempts
        self.post_timeout = post_timeout
        self.client_max_size = client_max_size
        self.media = MediaStore()
        self.api = FlowrouteApi(
            _accounts(accounts),
            self.media,
            dlr_delay=dlr_delay,
            dlr_status=dlr_status,
            dlr_status_code=dlr_status_code,
            dlr_description=dlr_description,
            dlr_form=dlr_form,
            rate_limit_retry_after=rate_limit_retry_after,
        )
        self.inbound: list[InboundResult] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""
        self.api_url = ""

    # -- lifecycle --------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.client_max_size)
        self.api.add_routes(app)
        self.media.add_routes(app)
        add_control_routes(app, self)
        return app

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = web.AppRunner(
            self.make_app(), handle_signals=False, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, backlog=2048)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}"
        self.api_url = f"{self.url}/v2.2"
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=self.post_timeout, connect=min(5.0, self.post_timeout)
            ),
            connector=aiohttp.TCPConnector(limit=256),
        )
        self.api.session = self._session
        self.api.base_url = self.url
        self.api.host = self.host
        self.api.port = self.port

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.api.cancel_tasks()
        if self._session is not None:
            await self._session.close()
            self._session = None
            self.api.session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- records and configuration ----------------------------------------------------------------

    @property
    def messages(self) -> list[AcceptedMessage]:
        """Messages accepted, oldest first (``answered`` False: a fault withheld the 202)."""
        return self.api.messages

    @property
    def receipts(self) -> list[ReceiptPost]:
        """Delivery receipt posts made, with the receiver's answer status."""
        return self.api.receipts

    @property
    def accounts(self) -> dict[str, AccountSpec]:
        return self.api.accounts

    def message(self, message_id: str) -> AcceptedMessage | None:
        return self.api.message(message_id)

    def stats(self) -> dict[str, Any]:
        out = self.api.stats()
        out["inbound"] = {
            "posted": len(self.inbound),
            "attempts": sum(r.attempts for r in self.inbound),
            "delivered": sum(1 for r in self.inbound if r.status == 200),
        }
        out["media_requests"] = dict(self.media.hits)
        return out

    def reset(self) -> None:
        """Forget messages, receipts, inbound results and counters.

        Accounts, faults, media and account-level callbacks stay (``set_callback(.., None)``
        forgets a callback).
        """
        self.api.reset()
        self.inbound.clear()
        self.media.reset_counters()

    def set_account(self, spec: AccountSpec) -> None:
        self.api.set_account(spec)

    def callbacks(self, access_key: str) -> dict[str, str | None]:
        """The account's callback URLs set with ``PUT /v2.1/messages/<kind>_callback``.

        ``{"sms": url | None, "mms": url | None, "dlr": url | None}``; KeyError for an access
        key the sandbox does not know (so a typo cannot pass for "not set").
        """
        return self.api.callbacks_for(access_key)  # a fresh dict

    def set_callback(self, access_key: str, kind: CallbackKind, url: str | None) -> None:
        """Set an account-level callback like the ``PUT`` does, or forget it with None."""
        self.api.set_callback(access_key, kind, url)

    def set_dlr_outcome(
        self, status: str, status_code: int | str | None, description: str | None = None
    ) -> None:
        """Level-2 receipt content, e.g. ``("delivery failure", 1003, "...")``."""
        self.api.set_dlr_outcome(status, status_code, description)

    def set_fault(
        self,
        status: int | None = None,
        *,
        count: int | None = None,
        seconds: float | None = None,
        latency_ms: float = 0.0,
        drop: bool = False,
        retry_after: str | None = None,
        detail: str | None = None,
        accept_then_drop: bool = False,
    ) -> Fault:
        """Make ``POST /v2.2/messages`` misbehave (replaces any current fault).

        The next ``count`` requests (or those within ``seconds``, or all until
        ``clear_faults()``) get ``latency_ms`` extra delay, then are dropped (``drop``: the
        connection is closed without an answer) or answered ``status`` with an ``errors`` body
        (and ``Retry-After: retry_after`` if given). With neither, they proceed normally.

        ``accept_then_drop`` makes the outcome unknown to the sender: an affected request that
        would get a 202 is recorded and accepted as usual (it is in the records listing and its
        delivery receipts are scheduled), then the connection is closed instead of answering.
        Affected requests that would not be accepted (401, 422, 429) get their usual answer.
        """
        return self.api.set_fault(
            status,
            count=count,
            seconds=seconds,
            latency_ms=latency_ms,
            drop=drop,
            retry_after=retry_after,
            detail=detail,
            accept_then_drop=accept_then_drop,
        )

    def clear_faults(self) -> None:
        self.api.clear_faults()

    def add_media(self, name: str, data: bytes, content_type: str) -> str:
        """Serve ``data`` at the returned URL (``<url>/media/<name>``)."""
        return self.url + self.media.add(name, data, content_type)

    def declare_media_size(self, url: str, size: int) -> None:
        """Size of an external media URL, for the 767840-byte MMS check."""
        self.api.declare_media_size(url, size)

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait for pending delivery receipts and background inbound posts."""
        async with asyncio.timeout(timeout):
            await self.api.wait_idle(timeout)
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- inbound webhooks -------------------------------------------------------------------------

    def inbound_url(self, kind: InboundKind, account: str | None = None) -> str:
        """Where Flowroute would post an inbound ``kind`` message: the account's callback URL.

        ``account`` (an access key) defaults to the only account with a ``kind`` callback set.
        Raises ValueError when that does not name exactly one URL.
        """
        if kind not in ("sms", "mms"):
            raise ValueError(f"unknown kind {kind!r}")
        if account is not None:
            if account not in self.accounts:
                raise ValueError(f"unknown account {account!r}")
            url = self.api.callbacks_for(account)[kind]
            if url is None:
                raise ValueError(f"account {account!r} has no {kind} callback set")
            return url
        urls = {key: url for key in self.accounts if (url := self.api.callbacks_for(key)[kind])}
        if len(urls) == 1:
            return next(iter(urls.values()))
        if not urls:
            raise ValueError(f"a gateway URL is needed: no account has a {kind} callback set")
        raise ValueError(f"accounts {sorted(urls)} have a {kind} callback set: name the account")

    def build_inbound(
        self,
        gateway_url: str | None = None,
        *,
        account: str | None = None,
        kind: InboundKind = "sms",
        form: Form = "jsonapi",
        to: str = "12025551234",
        from_: str = "12065550142",
        body: str | None = "Hello from the Flowroute sandbox",
        media: Sequence[InboundMedia | Mapping[str, Any]] = (),
        message_id: str | None = None,
        message_type: str = "longcode",
    ) -> InboundResult:
        """Build (and for MMS, register the media of) an inbound webhook without posting it.

        Without ``gateway_url`` it goes to ``inbound_url(kind, account)``, the URL set with
        ``PUT /v2.1/messages/<kind>_callback``; a given ``gateway_url`` wins over it.
        """
        if not self.url:
            raise RuntimeError("sandbox is not started")
        if gateway_url is None:
            gateway_url = self.inbound_url(kind, account)
        mid = message_id or new_message_id()
        if kind == "sms":
            if body is None:
                raise ValueError("an inbound SMS needs a body")
            payload = inbound_sms(
                to,
                from_,
                body,
                form=form,
                message_id=mid,
                message_type=message_type,
                callback_url=gateway_url if form == "jsonapi" else None,
            )
            return InboundResult(mid, gateway_url, kind, form, payload)
        if kind != "mms":
            raise ValueError(f"unknown kind {kind!r}")
        if form != "jsonapi":
            raise ValueError("inbound MMS only exist in the JSON:API form")
        specs: list[MediaSpec] = []
        for index, raw in enumerate(media):
            item = parse_media(raw)
            item_id = media_id(mid, item.name, index)
            if item.url is not None:
                url, size = item.url, item.size
            else:
                data = item.data
                if data is None:
                    data = media_bytes(item.name, item.size, item.content_type)
                path = self.media.add(item_id, data, item.content_type)
                signature = hashlib.sha256(item_id.encode()).hexdigest()
                url = f"{self.url}{path}?X-Amz-Expires=604800&X-Amz-Signature={signature}"
                size = len(data)
            specs.append(MediaSpec(url, item.name, item.content_type, size, id=item_id))
        payload = inbound_mms(
            to,
            from_,
            body,
            specs,
            message_id=mid,
            message_type=message_type,
            callback_url=gateway_url,
            api_base=self.api_url,
        )
        return InboundResult(mid, gateway_url, kind, form, payload, [s.url for s in specs])

    async def post_inbound(
        self,
        gateway_url: str | None = None,
        *,
        account: str | None = None,
        kind: InboundKind = "sms",
        form: Form = "jsonapi",
        to: str = "12025551234",
        from_: str = "12065550142",
        body: str | None = "Hello from the Flowroute sandbox",
        media: Sequence[InboundMedia | Mapping[str, Any]] = (),
        message_id: str | None = None,
        message_type: str = "longcode",
        resend_interval: float | None = None,
        max_attempts: int | None = None,
    ) -> InboundResult:
        """Post an inbound SMS/MMS webhook to ``gateway_url`` like Flowroute.

        Without ``gateway_url``, to the account's ``kind`` callback (see ``inbound_url``).
        Resends on anything but 200 or no answer, up to ``max_attempts`` (default 5) posts
        ``resend_interval`` (default the sandbox's, 30 s) apart. Returns when done.
        """
        result = self.build_inbound(
            gateway_url,
            account=account,
            kind=kind,
            form=form,
            to=to,
            from_=from_,
            body=body,
            media=media,
            message_id=message_id,
            message_type=message_type,
        )
        return await self.deliver_inbound(
            result, resend_interval=resend_interval, max_attempts=max_attempts
        )

    async def deliver_inbound(
        self,
        result: InboundResult,
        *,
        resend_interval: float | None = None,
        max_attempts: int | None = None,
    ) -> InboundResult:
        if self._session is None:
            raise RuntimeError("sandbox is not started")
        self.inbound.append(result)
        return await deliver(
            self._session,
            result,
            max_attempts=self.resend_attempts if max_attempts is None else max_attempts,
            interval=self.resend_interval if resend_interval is None else resend_interval,
        )

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a coroutine in the background; ``stop()`` cancels it, ``wait_idle()`` awaits it."""
        task: asyncio.Task[Any] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


async def serve(
    host: str = "127.0.0.1",
    port: int = 8099,
    accounts: Accounts | None = None,
    **options: Any,
) -> None:
    """Run a sandbox on ``host:port`` until cancelled (for ``smsbridge sandbox``).

    ``options`` are ``Sandbox`` keyword arguments (``resend_interval``, ``dlr_delay``, ...).
    """
    sandbox = Sandbox(host=host, port=port, accounts=accounts, **options)
    await sandbox.start()
    try:
        structlog.get_logger().info(
            "sandbox.started",
            url=sandbox.url,
            api_url=sandbox.api_url,
            accounts=sorted(sandbox.accounts),
        )
        await asyncio.Event().wait()
    finally:
        await sandbox.stop()
