"""The event loop every command runs on: uvloop when it is installed (libuv's loop, written in
C: the components spend markedly less CPU per message on it, see bench/), asyncio's own
otherwise, or when `SMSBRIDGE_EVENT_LOOP=asyncio` asks for it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def name() -> str:
    """`uvloop` or `asyncio`: the loop `run` uses."""
    wanted = os.environ.get("SMSBRIDGE_EVENT_LOOP", "").strip().lower()
    if wanted == "asyncio" or importlib.util.find_spec("uvloop") is None:
        return "asyncio"
    return "uvloop"


def factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A new loop of the chosen kind (None: asyncio's default)."""
    if name() != "uvloop":
        return None
    import uvloop

    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the chosen loop."""
    with asyncio.Runner(loop_factory=factory()) as runner:
        return runner.run(main)
