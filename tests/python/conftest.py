"""Fixtures for driving a running keygate with the official `openai` SDK.

`tests/python_clients.rs` starts keygate (in front of the mock upstream of
tests/support/upstream.rs) and passes the base URL and the keys it created in
the environment. Run through `cargo test --test python_clients`.
"""

import os

import pytest
from openai import AsyncOpenAI, OpenAI

KEY_VARS = {
    "plain": "KEYGATE_KEY",
    "rpm1": "KEYGATE_RPM1_KEY",
    "rpm1_refused": "KEYGATE_RPM1_REFUSED_KEY",
    "budget0": "KEYGATE_BUDGET0_KEY",
    "allowed": "KEYGATE_ALLOWED_KEY",
    "admin": "KEYGATE_ADMIN_KEY",
    "revoked": "KEYGATE_REVOKED_KEY",
}


def _require(var):
    value = os.environ.get(var)
    if not value:
        pytest.fail(
            f"{var} is not set: run these tests through "
            "`cargo test --test python_clients`, which starts keygate and creates the keys"
        )
    return value


@pytest.fixture(scope="session")
def base_url():
    return _require("KEYGATE_BASE_URL")


@pytest.fixture(scope="session")
def keys():
    return {name: _require(var) for name, var in KEY_VARS.items()}


@pytest.fixture
def make_client(base_url):
    """`make_client(api_key)` -> a sync client that never retries."""
    made = []

    def make(api_key):
        client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30.0)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(make_client, keys):
    """A client with the plain inference key (no limits)."""
    return make_client(keys["plain"])


@pytest.fixture
def make_async_client(base_url):
    def make(api_key):
        return AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30.0)

    return make
