"""Opt-out keywords: what the resolver does when an inbound message is one (its number's
policy has `opt_out = true`).

- STOP family: the sender is opted out of that number (the ledger's opt-out list, which keeps
  the word they texted), the bridge publishes `policy.opted_out`, and sends the policy's
  `opt_out_reply`;
- START family: opted back in, `policy.opted_in`, `opt_in_reply`;
- HELP family: `help_reply`.

The InboundMessage still reaches the PBX, with `keyword` set. A reply goes through the normal
outbound path (rate limits, retries, status events) as an OutboundRequest whose id is
`auto-<Flowroute id>`, so it is sent once however often Flowroute resends the keyword message;
it is not held back by the opt-out it confirms, nor by quiet hours. A sender that is not a
phone number (a short code) gets no reply: there is nothing to send it to.

A STOP or START that is stale (the person texted a later STOP or START, which the bridge
handled first; see smsbridge/ledger/optouts.py) changes nothing, publishes no event and gets
no reply: the later keyword decided the state and got the reply that matches it, so a second
one would at best repeat it and at worst contradict it.

Everything here may run twice (a redelivery after a crash, before the InboundMessage was
published): the list change is idempotent, the event keeps its message id and body (its `at`
is when the person texted), and the reply its request id.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from schemas.messages import OUTBOUND_REQUEST_TYPE, POLICY_TYPE
from smsbridge import topology
from smsbridge.broker import Broker
from smsbridge.config import NumberConfig, PolicyConfig
from smsbridge.flowroute.webhook import InboundSms
from smsbridge.ledger import optouts
from smsbridge.ledger.connection import Ledger
from smsbridge.logs import get_logger
from smsbridge.policies import Keyword, texted_word

log = get_logger(__name__)


class KeywordActions:
    def __init__(self, broker: Broker, ledger: Ledger | None) -> None:
        self.broker = broker
        self.ledger = ledger

    async def act(
        self,
        sms: InboundSms,
        number: NumberConfig,
        policy: PolicyConfig,
        keyword: Keyword,
        at: datetime,
    ) -> None:
        """`at`: when the person texted it (Flowroute's timestamp), which orders the changes."""
        if not sms.from_.startswith("+"):
            # A short code or an alphanumeric sender: nothing is ever sent to it (the outbound
            # path takes phone numbers only), so there is nothing to opt out of or reply to.
            log.info(
                "keyword from a sender without a phone number: nothing to do",
                number=number.number,
                sender=sms.from_,
                keyword=keyword,
            )
            return
        if keyword == "stop":
            if not await self._change(sms, number, "opted_out", keyword, at):
                return
            reply = policy.opt_out_reply
        elif keyword == "start":
            if not await self._change(sms, number, "opted_in", keyword, at):
                return
            reply = policy.opt_in_reply
        else:
            reply = policy.help_reply
        if reply:
            await self._reply(sms, number, keyword, reply)

    async def _change(
        self,
        sms: InboundSms,
        number: NumberConfig,
        change: optouts.Change,
        keyword: Keyword,
        at: datetime,
    ) -> bool:
        """Change the list and publish the event; False when the change is stale."""
        if self.ledger is None:  # the configuration requires a ledger for opt_out policies
            raise RuntimeError("opt-out keywords need the ledger")
        outcome = await optouts.change(
            self.ledger,
            change,
            number.number,
            sms.from_,
            by="keyword",
            keyword=texted_word(sms.body) or keyword.upper(),
            at=at,
        )
        log.info(
            "recipient " + change.replace("_", " "),
            number=number.number,
            recipient=sms.from_,
            outcome=str(outcome),
        )
        if outcome is optouts.Outcome.STALE:
            return False
        event = {
            "number": number.number,
            "recipient": sms.from_,
            "keyword": keyword,
            "at": at.astimezone(UTC),
        }
        message = topology.json_message(
            orjson.dumps(event, option=orjson.OPT_UTC_Z),
            message_id=f"{sms.id}/{change}",
            type_=POLICY_TYPE,
        )
        await self.broker.deliver(topology.EVENTS, topology.policy_key(change), message)
        return True

    async def _reply(
        self, sms: InboundSms, number: NumberConfig, keyword: Keyword, body: str
    ) -> None:
        request_id = f"{topology.AUTO_REPLY_PREFIX}{sms.id}"
        request = {"id": request_id, "from": number.number, "to": sms.from_, "body": body}
        message = topology.json_message(
            orjson.dumps(request),
            message_id=request_id,
            type_=OUTBOUND_REQUEST_TYPE,
            headers={topology.H_AUTO_REPLY: keyword},
        )
        await self.broker.deliver(topology.OUTBOUND, topology.SEND_KEY, message)
