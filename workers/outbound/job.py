"""A send job: an OutboundRequest resolved by intake into what an account's sender sends.

It travels in the account queue (and the delay queues) as JSON; the request's own id is its
AMQP message id. Headers carry how it has fared so far (`topology.H_FIRST_SEEN`,
`H_ATTEMPTS`, `H_RETRIES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from smsbridge.once import OutboundHistory

TYPE = "smsbridge.internal.send.v1"


class BadJob(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class SendJob:
    id: str
    account: str
    to: str  # E.164 with '+'
    from_: str  # E.164 with '+', a configured number
    body: str | None
    media_urls: list[str] = field(default_factory=list)
    extension: str | None = None  # who asked (history, policies)
    segments: int = 1  # as carriers count them (an MMS is 1)
    auto_reply: str | None = None  # the keyword family it answers, for a bridge's own reply

    @property
    def is_mms(self) -> bool:
        return bool(self.media_urls)

    def history(self) -> OutboundHistory:
        return OutboundHistory(
            self.account, self.from_, self.to, self.body, self.media_urls, self.extension
        )

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "account": self.account,
                "to": self.to,
                "from": self.from_,
                "body": self.body,
                "media_urls": self.media_urls,
                "extension": self.extension,
                "segments": self.segments,
                "auto_reply": self.auto_reply,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> SendJob:
        try:
            data: Any = orjson.loads(raw)
            media = data.get("media_urls") or []
            job = cls(
                id=str(data["id"]),
                account=str(data["account"]),
                to=str(data["to"]),
                from_=str(data["from"]),
                body=data.get("body"),
                media_urls=[str(u) for u in media],
                extension=data.get("extension"),
                segments=int(data.get("segments") or 1),
                auto_reply=data.get("auto_reply"),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadJob(f"unreadable send job: {exc}") from None
        if job.body is not None and not isinstance(job.body, str):
            raise BadJob("unreadable send job: body is not a string")
        return job
