from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smsbridge import logs
from smsbridge.config import Config
from smsbridge.sandbox import Sandbox
from tests.harness import fresh_vhost, make_config
from tests.pg import fresh_database

logs.configure("warning", "json")


@pytest.fixture
async def amqp_url() -> AsyncIterator[str]:
    """A fresh RabbitMQ vhost on the real broker, deleted afterwards."""
    async with fresh_vhost() as url:
        yield url


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(resend_interval=0.05) as sb:
        yield sb


@pytest.fixture
def config(amqp_url: str, tmp_path: Path, sandbox: Sandbox) -> Config:
    return make_config(amqp_url, tmp_path / "media", api_url=sandbox.api_url)


@pytest.fixture
async def ledger_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database on the shared server, dropped afterwards."""
    async with fresh_database() as url:
        yield url
