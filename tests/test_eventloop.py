"""The event loop every command runs on: uvloop (installed from the lock) unless
SMSBRIDGE_EVENT_LOOP=asyncio asks for asyncio's own."""

from __future__ import annotations

import asyncio

import pytest

from smsbridge import eventloop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_commands_run_on_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SMSBRIDGE_EVENT_LOOP", raising=False)
    assert eventloop.name() == "uvloop"
    assert eventloop.run(_loop_module()) == "uvloop"


def test_asyncio_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSBRIDGE_EVENT_LOOP", "asyncio")
    assert eventloop.name() == "asyncio"
    assert eventloop.run(_loop_module()) == "asyncio"
