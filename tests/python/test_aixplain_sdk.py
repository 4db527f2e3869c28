"""keygate's aiXplain-compatible key management, used through the real aiXplain SDK.

`aixplain` 0.2.48, v2 `APIKey` bound to `Aixplain(api_key=..., backend_url=...)`
(shared/wire/aixplain.md). `tests/aixplain_sdk.rs` starts keygate in front of the mock
upstream of tests/support/upstream.rs, creates an admin and an inference key, and passes
them here with `AIXPLAIN_ALLOW_INSECURE_URLS=1` (the SDK refuses http:// otherwise).

Inference calls go through keygate's proxy with the `openai` SDK; the native admin API is
read with `requests`. Run through `cargo test --test aixplain_sdk -- --nocapture`.
"""

import os
import uuid
from datetime import datetime, timedelta, timezone

import openai
import pytest
import requests

os.environ.setdefault("AIXPLAIN_ALLOW_INSECURE_URLS", "1")

from aixplain import Aixplain  # noqa: E402  (after the env var the SDK checks)
from aixplain.v2.api_key import TokenType  # noqa: E402
from aixplain.v2.exceptions import APIError, ResourceError, ValidationError  # noqa: E402

# A model path with a `/`: the SDK resolves it through `GET v2/models/{path}` before saving.
MODEL_PATH = "mockco/mock-model"
OTHER_MODEL = "mock-model"
MESSAGES = [{"role": "user", "content": "Say hello to the gateway please"}]


def _require(var):
    value = os.environ.get(var)
    if not value:
        pytest.fail(
            f"{var} is not set: run these tests through "
            "`cargo test --test aixplain_sdk`, which starts keygate and creates the keys"
        )
    return value


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def partial(secret):
    """The form keygate shows a key in after creation: first 4 … last 4."""
    return f"{secret[:4]}…{secret[-4:]}"


@pytest.fixture(scope="session")
def url():
    return _require("KEYGATE_AIX_URL")


@pytest.fixture(scope="session")
def admin_key():
    return _require("KEYGATE_AIX_ADMIN_KEY")


@pytest.fixture(scope="session")
def admin_key_id():
    return _require("KEYGATE_AIX_ADMIN_KEY_ID")


@pytest.fixture(scope="session")
def inference_key():
    return _require("KEYGATE_AIX_INFERENCE_KEY")


@pytest.fixture(scope="session")
def inference_key_id():
    return _require("KEYGATE_AIX_INFERENCE_KEY_ID")


@pytest.fixture(scope="session")
def aix(url, admin_key):
    """The SDK as a workspace admin uses it."""
    return Aixplain(api_key=admin_key, backend_url=url)


@pytest.fixture(scope="session")
def native(url, admin_key):
    """`native(method, path, json=None)` -> requests.Response on keygate's admin API."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {admin_key}"

    def call(method, path, **kwargs):
        return session.request(method, f"{url}{path}", timeout=30, **kwargs)

    yield call
    session.close()


@pytest.fixture
def make_openai(url):
    made = []

    def make(api_key):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=30.0)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def chat(client, model=OTHER_MODEL, **kwargs):
    return client.chat.completions.create(model=model, messages=MESSAGES, **kwargs)


def global_entry(usages):
    entries = [u for u in usages if u.model is None]
    assert len(entries) == 1, usages
    return entries[0]


# ---------------------------------------------------------------------------
# list / search


def test_list_and_search_return_every_key_of_the_workspace(
    aix, native, admin_key, admin_key_id, inference_key_id
):
    made = [aix.APIKey.create(name=unique("listed"), budget=None, global_limits=None) for _ in range(2)]
    # Names need not be unique: two native keys with one name are both listed.
    twin_name = unique("twin")
    twins = [native("POST", "/admin/v1/keys", json={"name": twin_name}).json()["id"] for _ in range(2)]

    keys = aix.APIKey.list()
    by_id = {k.id: k for k in keys}
    for key_id in [admin_key_id, inference_key_id, *twins, *(k.id for k in made)]:
        assert key_id in by_id, (key_id, keys)
    assert [k.id for k in keys if k.name == twin_name] == twins
    assert by_id[admin_key_id].is_admin is True
    assert by_id[admin_key_id].key == partial(admin_key)
    assert by_id[inference_key_id].is_admin is False
    for key in keys:
        # What the SDK would crash on never appears: limits are objects with ints,
        # asset limits a list; no full secret is ever listed.
        assert key.global_limits is not None
        assert isinstance(key.global_limits.request_per_minute, int)
        assert isinstance(key.asset_limits, list)
        assert "…" in key.key and len(key.key) == 9, key.key

    page = aix.APIKey.search()
    assert page.page_total == 1
    assert page.total == len(page.results) == len(keys)
    assert {k.id for k in page.results} == set(by_id)


# ---------------------------------------------------------------------------
# create / get


def test_create_round_trips_every_field_and_is_a_native_key(aix, native):
    name = unique("created")
    expires = (datetime.now(timezone.utc) + timedelta(days=30)).replace(microsecond=123456, tzinfo=None)
    key = aix.APIKey.create(
        name=name,
        budget=12.5,
        global_limits={"tpm": 1000, "tpd": 20000, "rpm": 30, "rpd": 400, "tokenType": "input"},
        asset_limits=[
            {"assetId": MODEL_PATH, "rpm": 5, "tpd": 900, "tokenType": "output"},
            {"model": "plain-model", "request_per_day": 7},
        ],
        expires_at=expires,
    )
    expires_wire = expires.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    # The answer to create carries the full key, once.
    assert key.id
    assert key.key.startswith("kg_") and "…" not in key.key and len(key.key) > 40
    assert key.name == name
    assert key.budget == 12.5
    assert key.expires_at == expires_wire
    assert key.is_admin is False
    # The model path was resolved through GET v2/models/{path} (its id is the path).
    assert key._id_to_path == {MODEL_PATH: MODEL_PATH}
    assert aix.Model.get(MODEL_PATH).id == MODEL_PATH

    got = aix.APIKey.get(key.id)
    assert got.id == key.id
    assert got.name == name
    assert got.budget == 12.5
    assert got.expires_at == expires_wire
    assert got.key == partial(key.key)
    assert got.is_admin is False
    g = got.global_limits
    assert (g.token_per_minute, g.token_per_day, g.request_per_minute, g.request_per_day) == (1000, 20000, 30, 400)
    assert g.token_type == TokenType.INPUT
    assets = {a.model: a for a in got.asset_limits}
    assert set(assets) == {MODEL_PATH, "plain-model"}
    a = assets[MODEL_PATH]
    assert (a.token_per_minute, a.token_per_day, a.request_per_minute, a.request_per_day) == (0, 900, 5, 0)
    assert a.token_type == TokenType.OUTPUT
    assert assets["plain-model"].request_per_day == 7
    assert assets["plain-model"].token_type == TokenType.TOTAL

    # An ordinary keygate key: the native admin API sees it with the same values.
    answer = native("GET", f"/admin/v1/keys/{key.id}")
    assert answer.status_code == 200, answer.text
    view = answer.json()
    assert view["name"] == name
    assert view["kind"] == "inference"
    assert view["status"] == "active"
    assert view["budget"] == {"limit_usd": 12.5, "period": "lifetime"}
    assert view["limits"] == {"rpm": 30, "rpd": 400, "tpm": 1000, "tpd": 20000, "token_type": "input"}
    models = {m["model"]: m for m in view["model_limits"]}
    # 0 on the aiXplain wire is "not set": no limit natively.
    assert models[MODEL_PATH] == {
        "model": MODEL_PATH, "rpm": 5, "rpd": None, "tpm": None, "tpd": 900, "token_type": "output",
    }
    assert datetime.fromisoformat(view["expires_at"].replace("Z", "+00:00")) == expires.replace(tzinfo=timezone.utc)
    assert view["partial_key"].startswith(key.key[:4]) and view["partial_key"].endswith(key.key[-4:])

    # And the key works for inference.
    assert chat_ok(key.key)


def chat_ok(secret):
    client = openai.OpenAI(base_url=f"{os.environ['KEYGATE_AIX_URL']}/v1", api_key=secret, max_retries=0)
    try:
        return chat(client).usage.total_tokens > 0
    finally:
        client.close()


def test_create_with_an_existing_name_updates_that_key(aix):
    name = unique("same-name")
    first = aix.APIKey.create(
        name=name, budget=1, global_limits={"rpm": 5}, asset_limits=[{"assetId": "m-a", "rpm": 1}]
    )
    secret = first.key
    second = aix.APIKey.create(name=name, budget=2, global_limits={"tpm": 50, "tokenType": "output"})
    assert second.id == first.id
    # An update never shows the full key again.
    assert second.key == partial(secret)
    assert [k.id for k in aix.APIKey.list() if k.name == name] == [first.id]

    got = aix.APIKey.get(first.id)
    assert got.budget == 2
    assert got.global_limits.token_per_minute == 50
    assert got.global_limits.request_per_minute == 0
    assert got.global_limits.token_type == TokenType.OUTPUT
    assert got.asset_limits == []


def test_a_422_on_create_falls_back_to_the_key_of_that_name(aix):
    """The SDK's own fallback: POST answered 422 -> re-list, adopt the key of that name."""
    existing = aix.APIKey.create(name=unique("fallback"), budget=3, global_limits={"rpm": 2})
    clash = aix.APIKey(name=existing.name, budget=None, expires_at="2001-01-01T00:00:00.000000Z")
    payload = clash.build_save_payload()
    clash._create(clash.RESOURCE_PATH, payload)  # POST fails 422 (expiry in the past)
    assert clash.id == existing.id
    assert clash.budget == 3


# ---------------------------------------------------------------------------
# update


def test_setters_and_save_update_the_key(aix, native):
    key = aix.APIKey.create(
        name=unique("setters"),
        budget=3,
        global_limits={"rpm": 5, "tokenType": "input"},
        asset_limits=[{"assetId": MODEL_PATH, "rpm": 2}],
    )
    secret = key.key
    fetched = aix.APIKey.get(key.id)
    fetched.set_token_per_minute(1000)
    fetched.set_token_per_day(20000)
    fetched.set_request_per_day(300)
    fetched.set_request_per_minute(9, model=MODEL_PATH)
    fetched.set_token_per_day(777, model=MODEL_PATH)
    with pytest.raises(ResourceError):
        fetched.set_request_per_minute(1, model="not-limited-model")
    new_name = unique("renamed")
    fetched.name = new_name
    fetched.budget = 4.25
    fetched.save()  # PUT sdk/api-keys/{id}

    # The SDK copies the PUT answer onto the object: values as saved, the key partial.
    assert fetched.id == key.id
    assert fetched.name == new_name
    assert fetched.key == partial(secret)
    again = aix.APIKey.get(key.id)
    assert again.name == new_name
    assert again.budget == 4.25
    g = again.global_limits
    assert (g.token_per_minute, g.token_per_day, g.request_per_minute, g.request_per_day) == (1000, 20000, 5, 300)
    assert g.token_type == TokenType.INPUT
    [asset] = again.asset_limits
    assert asset.model == MODEL_PATH
    assert (asset.request_per_minute, asset.token_per_day) == (9, 777)

    view = native("GET", f"/admin/v1/keys/{key.id}").json()
    assert view["name"] == new_name
    assert view["budget"] == {"limit_usd": 4.25, "period": "lifetime"}
    assert view["limits"]["tpm"] == 1000 and view["limits"]["rpd"] == 300

    # Setting a limit back to 0 removes it (0 = no limit on this surface).
    again.set_request_per_minute(0)
    again.save()
    assert native("GET", f"/admin/v1/keys/{key.id}").json()["limits"]["rpm"] is None


def test_update_keeps_the_period_of_a_native_budget(aix, native):
    made = native(
        "POST", "/admin/v1/keys", json={"name": unique("monthly"), "budget": {"limit_usd": 10, "period": "month"}}
    ).json()
    key = aix.APIKey.get(made["id"])
    assert key.budget == 10
    key.budget = 15
    key.save()
    assert native("GET", f"/admin/v1/keys/{made['id']}").json()["budget"] == {"limit_usd": 15, "period": "month"}
    key.budget = None
    key.save()
    assert native("GET", f"/admin/v1/keys/{made['id']}").json()["budget"] is None


# ---------------------------------------------------------------------------
# delete


def test_delete_revokes_the_key(aix, native, make_openai):
    key = aix.APIKey.create(name=unique("deleted"), budget=None, global_limits=None)
    secret, key_id = key.key, key.id
    stale = aix.APIKey.get(key_id)

    result = key.delete()  # DELETE sdk/api-keys/{id}
    assert result.status == "SUCCESS" and result.deleted_id == key_id
    assert key.id is None

    with pytest.raises(APIError) as info:
        aix.APIKey.get(key_id)
    assert info.value.status_code == 404
    assert "API key not found" in str(info.value)
    assert key_id not in {k.id for k in aix.APIKey.list()}
    assert native("GET", f"/admin/v1/keys/{key_id}").status_code == 404
    with pytest.raises(openai.AuthenticationError):
        chat(make_openai(secret))

    # Failures of save and delete come back as the SDK's ResourceError.
    with pytest.raises(ResourceError):
        stale.delete()
    with pytest.raises(ResourceError):
        stale.save()
    with pytest.raises(APIError) as info:
        stale.get_usage()
    assert info.value.status_code == 404


# ---------------------------------------------------------------------------
# usage


def test_usage_counts_real_inference_calls(aix, url, make_openai):
    key = aix.APIKey.create(
        name=unique("usage"),
        budget=None,
        global_limits={"rpd": 100, "tpd": 100000, "tokenType": "output"},
        asset_limits=[{"assetId": MODEL_PATH, "rpd": 10, "tpd": 5000, "tokenType": "total"}],
    )
    secret = key.key
    client = make_openai(secret)
    on_model = [chat(client, model=MODEL_PATH), chat(client, model=MODEL_PATH, max_tokens=3)]
    elsewhere = [chat(client, model=OTHER_MODEL)]

    usages = key.get_usage()  # GET sdk/api-keys/{id}/usage-limits
    assert len(usages) == 2
    overall = global_entry(usages)
    assert overall.daily_request_count == 3
    assert overall.daily_request_limit == 100
    # Global tokenType is output: only completion tokens count.
    assert overall.daily_token_count == sum(c.usage.completion_tokens for c in on_model + elsewhere)
    assert overall.daily_token_limit == 100000

    [per_model] = key.get_usage(model=MODEL_PATH)
    assert per_model.model == MODEL_PATH
    assert per_model.daily_request_count == 2
    assert per_model.daily_request_limit == 10
    assert per_model.daily_token_count == sum(c.usage.total_tokens for c in on_model)
    assert per_model.daily_token_limit == 5000
    assert key.get_usage(model="never-used") == []

    # The key's own view, with its own (inference) key: the same numbers.
    own = Aixplain(api_key=secret, backend_url=url)
    mine = own.APIKey.get_usage_limits()  # GET sdk/api-keys/usage-limits
    assert [u.to_dict() for u in mine] == [u.to_dict() for u in usages]
    [mine_on_model] = own.APIKey.get_usage_limits(model=MODEL_PATH)
    assert mine_on_model.daily_request_count == 2


def test_usage_limits_of_the_calling_inference_key(url, inference_key, make_openai):
    chat(make_openai(inference_key))
    own = Aixplain(api_key=inference_key, backend_url=url)
    usage = global_entry(own.APIKey.get_usage_limits())
    assert usage.daily_request_count >= 1
    assert usage.daily_request_limit == 0  # no limit set
    assert usage.daily_token_count > 0


def test_a_limit_set_through_the_sdk_is_enforced_by_the_proxy(aix, make_openai):
    key = aix.APIKey.create(name=unique("rpm1"), budget=None, global_limits={"rpm": 1})
    client = make_openai(key.key)
    chat(client)
    with pytest.raises(openai.RateLimitError) as info:
        chat(client)
    assert info.value.status_code == 429
    assert info.value.code == "rate_limit_exceeded"

    # Lifting the limit (0 = no limit) through the SDK takes effect at once.
    key.set_request_per_minute(0)
    key.save()
    assert chat(client).usage.total_tokens > 0


def test_a_budget_set_through_the_sdk_is_enforced_by_the_proxy(aix, make_openai):
    key = aix.APIKey.create(name=unique("budget0"), budget=0, global_limits=None)
    assert aix.APIKey.get(key.id).budget == 0
    with pytest.raises(openai.APIStatusError) as info:
        chat(make_openai(key.key))
    assert info.value.status_code == 402


# ---------------------------------------------------------------------------
# get_by_access_key


def test_get_by_access_key_finds_the_right_key(aix, admin_key, admin_key_id, inference_key, inference_key_id):
    a = aix.APIKey.create(name=unique("by-access-a"), budget=None, global_limits=None)
    b = aix.APIKey.create(name=unique("by-access-b"), budget=None, global_limits=None)
    assert aix.APIKey.get_by_access_key(a.key).id == a.id
    assert aix.APIKey.get_by_access_key(b.key).id == b.id
    assert aix.APIKey.get_by_access_key(admin_key).id == admin_key_id
    assert aix.APIKey.get_by_access_key(inference_key).id == inference_key_id
    with pytest.raises(ResourceError):
        aix.APIKey.get_by_access_key("nope-not-a-key")
    with pytest.raises(ValidationError):
        aix.APIKey.get_by_access_key("kg_1234")


# ---------------------------------------------------------------------------
# failures, with the SDK's own exception classes


def test_a_bad_key_is_an_api_error_401(url):
    bad = Aixplain(api_key="kg_this_is_not_a_key", backend_url=url)
    with pytest.raises(APIError) as info:
        bad.APIKey.list()
    assert info.value.status_code == 401
    with pytest.raises(APIError) as info:
        bad.APIKey.get_usage_limits()
    assert info.value.status_code == 401


def test_an_inference_key_cannot_manage_keys(url, inference_key, inference_key_id, aix):
    infer = Aixplain(api_key=inference_key, backend_url=url)
    with pytest.raises(APIError) as info:
        infer.APIKey.list()
    assert info.value.status_code == 403
    with pytest.raises(APIError) as info:
        infer.APIKey.get(inference_key_id)
    assert info.value.status_code == 403
    with pytest.raises(ResourceError):
        infer.APIKey.create(name=unique("sneaky"), budget=None, global_limits=None)
    assert not [k for k in aix.APIKey.list() if k.name.startswith("sneaky")]


def test_unknown_ids_are_api_error_404(aix):
    for key_id in [str(uuid.uuid4()), "not-a-uuid"]:
        with pytest.raises(APIError) as info:
            aix.APIKey.get(key_id)
        assert info.value.status_code == 404
        assert "API key not found" in str(info.value)


def test_invalid_saves_are_resource_errors(aix):
    with pytest.raises(ResourceError) as info:
        aix.APIKey.create(name="x" * 201, budget=None, global_limits=None)
    assert "name" in str(info.value)
    with pytest.raises(ResourceError) as info:
        aix.APIKey.create(name=unique("past"), budget=None, global_limits=None, expires_at="2001-01-01T00:00:00Z")
    assert "expiresAt" in str(info.value)
    # The SDK validates negative values itself, before any request.
    with pytest.raises(Exception):
        aix.APIKey.create(name=unique("negative"), budget=-1, global_limits=None)
