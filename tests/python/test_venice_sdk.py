"""keygate's Venice-compatible key management driven by the real Venice SDK.

`venice-py` 2.9.0 (`venice_ai`), both `SyncVeniceClient` and `VeniceClient` (async), every
method of `client.api_keys`, against a keygate started by `tests/venice_sdk.rs` (which
passes the base URL and the keys below in the environment). Inference goes through
keygate's proxy with the `openai` SDK; the native admin API is read with `requests`.

Run through `cargo test --test venice_sdk -- --nocapture`.
"""

import asyncio
import datetime
import inspect
import os
import time
import uuid

import openai
import pytest
import requests
from eth_account import Account
from eth_account.messages import encode_defunct
from venice_ai import SyncVeniceClient, VeniceClient
from venice_ai.exceptions import (
    ApiKeyIpRestrictedError,
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from venice_ai.types.api import CreateApiKeyRequest, Web3CreateApiKeyRequest

MODES = ["sync", "async"]
MODEL = "mock-model"
YEAR = datetime.date.today().year + 2


def _env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"{name} is not set: run these tests through `cargo test --test venice_sdk`, "
            "which starts keygate and creates the keys"
        )
    return value


@pytest.fixture(scope="session")
def gateway():
    """`http://127.0.0.1:PORT`: the SDK appends `/api/v1` to a URL without a path."""
    return _env("KEYGATE_VENICE_URL")


@pytest.fixture(scope="session")
def admin_key():
    return _env("KEYGATE_VENICE_ADMIN_KEY")


class AsyncApi:
    """`VeniceClient` (async) driven from a sync test: every coroutine the SDK returns runs
    on this adapter's own event loop, where the client's aiohttp session lives."""

    def __init__(self, client, loop):
        self._client = client
        self._loop = loop

    def run(self, value):
        return self._loop.run_until_complete(value) if inspect.isawaitable(value) else value

    def __getattr__(self, name):
        method = getattr(self._client.api_keys, name)

        def call(*args, **kwargs):
            return self.run(method(*args, **kwargs))

        return call

    def collect(self, paginator):
        async def all_items():
            return [item async for item in paginator]

        return self.run(all_items())


class SyncApi:
    """`SyncVeniceClient`: calls are synchronous already."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        return getattr(self._client.api_keys, name)

    def collect(self, paginator):
        # `iter_all` is not a coroutine method, so even the sync client hands back the
        # async `Paginator` (wire/venice.md §2). It must run on the loop that owns the
        # client's session: the sync client's own background loop.
        async def all_items():
            return [item async for item in paginator]

        return self._client._run(all_items())


@pytest.fixture
def venice(gateway):
    """`venice(mode, key)` -> an `api_keys` adapter for that client kind and key.

    The sync client gets the bare host (the SDK appends `/api/v1`), the async one the
    explicit `/api/v1` base: both forms of the base URL are exercised.
    """
    opened = []

    def make(mode, key):
        if mode == "sync":
            client = SyncVeniceClient(api_key=key, base_url=gateway, max_retries=0, timeout=30)
            opened.append(("sync", client, None))
            return SyncApi(client)
        loop = asyncio.new_event_loop()
        client = VeniceClient(api_key=key, base_url=f"{gateway}/api/v1", max_retries=0, timeout=30)
        opened.append(("async", client, loop))
        return AsyncApi(client, loop)

    yield make
    for mode, client, loop in opened:
        if mode == "sync":
            client.close()
        else:
            loop.run_until_complete(client.close())
            loop.close()


class Native:
    """The native admin API (`/admin/v1`) with the admin key."""

    def __init__(self, gateway, admin_key):
        self._gateway = gateway
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {admin_key}"

    def get(self, path):
        return self._session.get(f"{self._gateway}{path}", timeout=30)

    def close(self):
        self._session.close()


@pytest.fixture
def native(gateway, admin_key):
    client = Native(gateway, admin_key)
    yield client
    client.close()


def openai_client(gateway, key):
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key=key, max_retries=0, timeout=30)


def chat(gateway, key):
    with openai_client(gateway, key) as client:
        return client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello there"}]
        )


def inference_key(venice_api, description, **fields):
    return venice_api.create(
        api_key_request=CreateApiKeyRequest(
            apiKeyType="INFERENCE", description=description, **fields
        )
    )


# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_create_retrieve_list_update_delete(mode, venice, admin_key, native):
    api = venice(mode, admin_key)

    created = api.create(
        api_key_request=CreateApiKeyRequest(
            apiKeyType="INFERENCE",
            description=f"{mode} tenant",
            consumptionLimit={"usd": 10, "diem": 2},
            limitPeriod="MONTH",
            expiresAt=f"{YEAR}-01-01",
            ipAllowlist=["127.0.0.1", "10.1.2.3/8"],
            modelPrivacy="PRIVATE_TEXT",
        )
    )
    assert created.apiKey.startswith("kg_")
    assert created.apiKeyType == "INFERENCE"
    assert created.description == f"{mode} tenant"
    assert created.consumptionLimit.usd == 10.0
    assert created.consumptionLimit.diem == 2.0
    assert created.consumptionLimit.vcu is None
    assert created.limitPeriod == "MONTH"
    assert created.expiresAt == f"{YEAR}-01-01T00:00:00.000Z"
    assert created.ipAllowlist == ["127.0.0.1/32", "10.0.0.0/8"]
    uuid.UUID(created.id)

    # The key is an ordinary keygate key: the native admin API shows its budget and allowlist.
    seen = native.get(f"/admin/v1/keys/{created.id}").json()
    assert seen["name"] == f"{mode} tenant"
    assert seen["budget"] == {"limit_usd": 10.0, "period": "month"}
    assert seen["ip_allowlist"] == ["127.0.0.1/32", "10.0.0.0/8"]
    assert seen["expires_at"].startswith(f"{YEAR}-01-01T00:00:00")

    # ...and the proxy accepts it (127.0.0.1 is on its allowlist).
    assert chat(_env("KEYGATE_VENICE_URL"), created.apiKey).choices[0].message.content

    key = api.retrieve(api_key_id=created.id)
    assert key.id == created.id
    assert key.description == f"{mode} tenant"
    assert key.apiKeyType == "INFERENCE"
    assert key.last6Chars == created.apiKey[-6:]
    assert key.consumptionLimits.usd == 10.0
    assert key.consumptionLimits.diem == 2.0
    assert key.modelPrivacy == "PRIVATE_TEXT"
    assert key.limitPeriod == "MONTH"
    assert key.ipAllowlist == ["127.0.0.1/32", "10.0.0.0/8"]
    assert key.expiresAt == f"{YEAR}-01-01T00:00:00.000Z"
    assert key.createdAt.endswith("Z")
    assert key.lastUsedAt and key.lastUsedAt.endswith("Z"), "the chat above used it"
    assert key.usage is not None and key.currentPeriodUsage is not None
    assert float(key.usage.trailingSevenDays.usd) > 0, "the chat above was charged"
    assert float(key.usage.trailingSevenDays.diem) == 0

    ids = [k.id for k in api.list()]
    assert created.id in ids
    assert len(api.list(page=1, limit=1)) == 1

    # Each field on its own.
    key = api.update(id=created.id, description=f"{mode} renamed")
    assert key.description == f"{mode} renamed"
    key = api.update(id=created.id, expires_at=f"{YEAR}-06-30T12:00:00Z")
    assert key.expiresAt == f"{YEAR}-06-30T12:00:00.000Z"
    key = api.update(id=created.id, consumption_limit={"usd": 5, "diem": 1})
    assert (key.consumptionLimits.usd, key.consumptionLimits.diem) == (5.0, 1.0)
    assert key.limitPeriod == "MONTH", "the period stays"
    key = api.update(id=created.id, limit_period="LIFETIME")
    assert key.limitPeriod == "LIFETIME"
    assert key.consumptionLimits.usd == 5.0
    key = api.update(id=created.id, model_privacy="ALL")
    assert key.modelPrivacy == "ALL"
    key = api.update(id=created.id, ip_allowlist=["192.0.2.0/24", "2001:db8::/32"])
    assert key.ipAllowlist == ["192.0.2.0/24", "2001:db8::/32"]
    # The empty values clear.
    key = api.update(id=created.id, expires_at="")
    assert key.expiresAt is None
    key = api.update(id=created.id, ip_allowlist=[])
    assert key.ipAllowlist == []
    seen = native.get(f"/admin/v1/keys/{created.id}").json()
    assert seen["expires_at"] is None and seen["ip_allowlist"] is None
    assert seen["budget"] == {"limit_usd": 5.0, "period": "lifetime"}

    # An ADMIN key, which then manages keys itself.
    admin = api.create(api_key_request=CreateApiKeyRequest(apiKeyType="ADMIN", description=f"{mode} ops"))
    assert admin.apiKeyType == "ADMIN"
    assert admin.consumptionLimit is not None
    assert created.id in [k.id for k in venice(mode, admin.apiKey).list()]

    # Delete: the key stops working, and it is gone for every reader.
    assert api.delete(api_key_id=created.id).success is True
    with pytest.raises(NotFoundError):
        api.retrieve(api_key_id=created.id)
    with pytest.raises(NotFoundError):
        api.delete(api_key_id=created.id)
    with pytest.raises(NotFoundError):
        api.update(id=created.id, description="ghost")
    assert native.get(f"/admin/v1/keys/{created.id}").status_code == 404
    with pytest.raises(openai.AuthenticationError):
        chat(_env("KEYGATE_VENICE_URL"), created.apiKey)
    assert api.delete(api_key_id=admin.id).success is True


@pytest.mark.parametrize("mode", MODES)
def test_iter_all_walks_every_page_and_stops(mode, venice, admin_key):
    api = venice(mode, admin_key)
    made = {inference_key(api, f"{mode} page {i}").id for i in range(7)}
    everything = [k.id for k in api.list()]
    assert len(everything) > 3

    walked = [k.id for k in api.collect(api.iter_all(page_size=3, max_items=10_000))]
    assert made <= set(walked)
    assert sorted(walked) == sorted(everything), "each key exactly once"
    capped = api.collect(api.iter_all(page_size=2, max_items=5))
    assert len(capped) == 5
    for key_id in made:
        api.delete(api_key_id=key_id)


@pytest.mark.parametrize("mode", MODES)
def test_rate_limits_are_real_and_the_balance_goes_down(mode, venice, admin_key, gateway):
    key = _env(f"KEYGATE_VENICE_LIMITED_{mode.upper()}_KEY")
    api = venice(mode, key)

    before = api.get_rate_limits().data
    assert before.accessPermitted is True
    assert before.apiTier.isCharged is True
    assert before.balances.USD == 1.0
    assert before.balances.DIEM == 0.0
    assert before.keyExpiration is None
    assert before.nextEpochBegins.endswith("T00:00:00.000Z")
    limits = {(m.apiModelId, r.type): r.amount for m in before.rateLimits for r in m.rateLimits}
    assert limits == {(None, "RPM"): 100.0, (None, "TPM"): 100_000.0, (MODEL, "RPD"): 50.0}

    chat(gateway, key)
    for _ in range(50):
        after = api.get_rate_limits().data
        if after.balances.USD < 1.0:
            break
        time.sleep(0.1)
    assert 0 < after.balances.USD < 1.0, after.balances
    assert after.accessPermitted is True

    # The admin sees the same spend in the key's usage.
    key_id = _env(f"KEYGATE_VENICE_LIMITED_{mode.upper()}_ID")
    usage = venice(mode, admin_key).retrieve(api_key_id=key_id)
    assert float(usage.usage.trailingSevenDays.usd) == pytest.approx(1.0 - after.balances.USD)
    assert float(usage.currentPeriodUsage.usd) == pytest.approx(1.0 - after.balances.USD)


@pytest.mark.parametrize("mode", MODES)
def test_a_refused_inference_call_shows_in_the_log(mode, venice, admin_key, gateway):
    key = _env(f"KEYGATE_VENICE_RPM1_{mode.upper()}_KEY")
    key_id = _env(f"KEYGATE_VENICE_RPM1_{mode.upper()}_ID")
    chat(gateway, key)
    with pytest.raises(openai.RateLimitError):
        chat(gateway, key)

    for client_key in (admin_key, key):
        log = venice(mode, client_key).get_rate_limit_logs()
        assert log.object == "list"
        assert len(log.data) <= 50
        mine = [e for e in log.data if e.apiKeyId == key_id]
        assert mine, log.data
        assert mine[0].rateLimitType == "RPM"
        assert mine[0].modelId == MODEL
        assert mine[0].rateLimitTier
        datetime.datetime.fromisoformat(mine[0].timestamp.replace("Z", "+00:00"))
    # An inference key sees its own refusals only.
    own = venice(mode, key).get_rate_limit_logs().data
    assert {e.apiKeyId for e in own} == {key_id}


@pytest.mark.parametrize("mode", MODES)
def test_venice_keys_are_enforced_by_the_proxy(mode, venice, admin_key, gateway):
    api = venice(mode, admin_key)
    broke = inference_key(api, f"{mode} no budget", consumptionLimit={"usd": 0})
    with pytest.raises(openai.APIStatusError) as refused:
        chat(gateway, broke.apiKey)
    assert refused.value.status_code == 402
    elsewhere = inference_key(api, f"{mode} elsewhere", ipAllowlist=["203.0.113.0/24"])
    with pytest.raises(openai.PermissionDeniedError):
        chat(gateway, elsewhere.apiKey)
    api.update(id=elsewhere.id, ip_allowlist=[])
    deadline = time.time() + 5
    while True:
        try:
            chat(gateway, elsewhere.apiKey)
            break
        except openai.PermissionDeniedError:
            assert time.time() < deadline, "the lifted allowlist never took effect"
            time.sleep(0.1)
    for key in (broke, elsewhere):
        api.delete(api_key_id=key.id)


@pytest.mark.parametrize("mode", MODES)
def test_failures_raise_the_sdk_exception_classes(mode, venice, admin_key):
    api = venice(mode, admin_key)

    with pytest.raises(AuthenticationError):
        venice(mode, "kg_this_is_not_a_key").list()

    inference = inference_key(api, f"{mode} plain")
    with pytest.raises(PermissionDeniedError) as denied:
        venice(mode, inference.apiKey).list()
    assert not isinstance(denied.value, ApiKeyIpRestrictedError)
    with pytest.raises(PermissionDeniedError):
        venice(mode, inference.apiKey).create(
            api_key_request=CreateApiKeyRequest(apiKeyType="ADMIN", description="escalate")
        )
    # An inference key reads its own limits.
    assert venice(mode, inference.apiKey).get_rate_limits().data.accessPermitted is True

    restricted = inference_key(api, f"{mode} restricted", ipAllowlist=["203.0.113.0/24"])
    with pytest.raises(ApiKeyIpRestrictedError):
        venice(mode, restricted.apiKey).get_rate_limits()

    with pytest.raises(InvalidRequestError) as invalid:
        inference_key(api, f"{mode} bad", ipAllowlist=["banana"])
    assert "ipAllowlist.0" in str(invalid.value)
    with pytest.raises(InvalidRequestError):
        inference_key(api, f"{mode} past", expiresAt="2001-01-01")

    with pytest.raises(NotFoundError):
        api.retrieve(api_key_id=str(uuid.uuid4()))
    with pytest.raises(NotFoundError):
        api.retrieve(api_key_id="not-a-uuid")

    for key in (inference, restricted):
        api.delete(api_key_id=key.id)


def test_the_workspace_key_cap_is_a_conflict(venice):
    capped = _env("KEYGATE_VENICE_CAPPED_ADMIN_KEY")
    api = venice("sync", capped)
    # The capped workspace allows 2 live keys: its admin key and one more.
    made = inference_key(api, "the one more")
    with pytest.raises(ConflictError):
        inference_key(api, "one too many")
    api.delete(api_key_id=made.id)
    assert inference_key(api, "room again").id


def sign(token, account):
    signature = Account.sign_message(encode_defunct(text=token), account.key).signature.hex()
    return signature if signature.startswith("0x") else f"0x{signature}"


@pytest.mark.parametrize("mode", MODES)
def test_web3_key_for_the_signing_wallet(mode, venice, native, gateway):
    # The SDK cannot be built without a key; the web3 routes ignore it.
    api = venice(mode, "kg_unused_by_the_web3_routes")
    wallet = Account.create()

    token = api.get_web3_token()
    assert token.success is True
    created = api.create_web3_key(
        web3_key_request=Web3CreateApiKeyRequest(
            apiKeyType="INFERENCE",
            address=wallet.address,
            signature=sign(token.data.token, wallet),
            token=token.data.token,
            consumptionLimit={"usd": 2},
            limitPeriod="MONTH",
        )
    )
    assert created.success is True
    assert created.data.apiKeyType == "INFERENCE"
    assert created.data.description == "Web3 API Key"
    assert created.data.consumptionLimit.usd == 2.0
    assert created.data.apiKey.startswith("kg_")

    # An ordinary keygate key: it calls models through the proxy, and the native API
    # shows the wallet.
    assert chat(gateway, created.data.apiKey).choices[0].message.content
    seen = native.get(f"/admin/v1/keys/{created.data.id}").json()
    assert seen["wallet_address"] == wallet.address
    assert seen["created_by"] == f"web3:{wallet.address}"
    assert seen["kind"] == "inference"
    assert seen["budget"] == {"limit_usd": 2.0, "period": "month"}

    # The same token again: refused.
    with pytest.raises(AuthenticationError):
        api.create_web3_key(
            web3_key_request=Web3CreateApiKeyRequest(
                apiKeyType="INFERENCE",
                address=wallet.address,
                signature=sign(token.data.token, wallet),
                token=token.data.token,
            )
        )

    # Signed by another wallet than the one claimed: refused.
    fresh = api.get_web3_token().data.token
    with pytest.raises(AuthenticationError):
        api.create_web3_key(
            web3_key_request=Web3CreateApiKeyRequest(
                apiKeyType="INFERENCE",
                address=wallet.address,
                signature=sign(fresh, Account.create()),
                token=fresh,
            )
        )

    # An expired token (issued by this gateway an hour ago): refused.
    expired = _env("KEYGATE_VENICE_EXPIRED_TOKEN")
    with pytest.raises(AuthenticationError) as old:
        api.create_web3_key(
            web3_key_request=Web3CreateApiKeyRequest(
                apiKeyType="INFERENCE",
                address=wallet.address,
                signature=sign(expired, wallet),
                token=expired,
            )
        )
    assert "expired" in str(old.value)

    # ADMIN keys are never made this way.
    with pytest.raises(PermissionDeniedError):
        api.create_web3_key(
            web3_key_request=Web3CreateApiKeyRequest(
                apiKeyType="ADMIN",
                address=wallet.address,
                signature=sign(fresh, wallet),
                token=fresh,
            )
        )
    # The refusals above did not spend `fresh`: the right signature still works once.
    again = api.create_web3_key(
        web3_key_request=Web3CreateApiKeyRequest(
            apiKeyType="INFERENCE",
            address=wallet.address.lower(),
            signature=sign(fresh, wallet),
            token=fresh,
            description=f"{mode} second wallet key",
        )
    )
    assert again.data.description == f"{mode} second wallet key"
