"""Fixtures for the API tests: the real app on a real loopback server, real SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from api_helpers import (
    EDDSA_PUBLIC_PEM,
    HS256_SECRET,
    Tenant,
    new_tenant,
    write_signing_key,
)

from api.app import create_app
from api.config import Config
from api.keys import KeyStore
from api.services import SERVICES, Services


@pytest.fixture
def config(tmp_path: Path) -> Config:
    write_signing_key(tmp_path / "data")
    return Config(
        data_dir=tmp_path / "data",
        jwt_hs256_secret=HS256_SECRET,
        jwt_eddsa_public_key=EDDSA_PUBLIC_PEM,
        max_body_bytes=64 * 1024,
        shutdown_grace_seconds=1.0,
    )


@pytest.fixture
def make_client() -> Callable[[Config], TestClient]:
    def make(config: Config) -> TestClient:
        return TestClient(TestServer(create_app(config), host="127.0.0.1"))

    return make


@pytest.fixture
async def client(config: Config) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(config), host="127.0.0.1")) as c:
        yield c


@pytest.fixture
def services(client: TestClient) -> Services:
    return client.app[SERVICES]


@pytest.fixture
def keys(services: Services) -> KeyStore:
    return services.keys


@pytest.fixture
def tenant_a(keys: KeyStore) -> Tenant:
    return new_tenant(keys, "tenant-a")


@pytest.fixture
def tenant_b(keys: KeyStore) -> Tenant:
    return new_tenant(keys, "tenant-b")
