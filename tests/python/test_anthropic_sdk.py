"""keygate's Anthropic Messages route driven by the official `anthropic` SDK.

`tests/python_clients.rs` starts keygate in front of the mock upstream (as an upstream of
`kind = "anthropic"`), creates the keys, and passes them and keygate's address (as
`ANTHROPIC_BASE_URL` would be, without `/v1`) in the environment. Run through
`cargo test --test python_clients anthropic`.
"""

import os

import anthropic
import pytest

# The mock's reply: one token per word (tests/support/upstream/mod.rs).
REPLY = "Hello there this is a test reply"
PROMPT = "tell me a short story please"


def _require(var):
    value = os.environ.get(var)
    if not value:
        pytest.fail(
            f"{var} is not set: run these tests through "
            "`cargo test --test python_clients`, which starts keygate and creates the keys"
        )
    return value


@pytest.fixture
def make_client():
    made = []

    def make(api_key):
        client = anthropic.Anthropic(
            base_url=_require("KEYGATE_ANTHROPIC_BASE_URL"),
            api_key=api_key,
            max_retries=0,
            timeout=30.0,
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(make_client):
    return make_client(_require("KEYGATE_KEY"))


def messages():
    return [{"role": "user", "content": PROMPT}]


def test_messages_create_returns_the_upstreams_message(client):
    message = client.messages.create(model="mock-model", max_tokens=5, messages=messages())
    assert message.type == "message"
    assert message.content[0].text == "Hello there this is a"
    assert message.stop_reason == "max_tokens"
    assert message.usage.input_tokens == len(PROMPT.split())
    assert message.usage.output_tokens == 5


def test_cache_tokens_reach_the_client(client):
    message = client.messages.create(model="mock-cached", max_tokens=64, messages=messages())
    assert message.usage.cache_creation_input_tokens == 1000
    assert message.usage.cache_read_input_tokens == 2000


def test_messages_stream_yields_the_text_and_the_final_usage(client):
    with client.messages.stream(model="mock-model", max_tokens=64, messages=messages()) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == REPLY
    assert final.content[0].text == REPLY
    assert final.usage.input_tokens == len(PROMPT.split())
    assert final.usage.output_tokens == 7
    assert final.stop_reason == "end_turn"


def test_raw_stream_events_arrive_in_anthropics_order(client):
    stream = client.messages.create(
        model="mock-model", max_tokens=2, messages=messages(), stream=True
    )
    kinds = [event.type for event in stream]
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_count_tokens(client):
    counted = client.messages.count_tokens(model="mock-model", messages=messages())
    assert counted.input_tokens == len(PROMPT.split())


def test_a_refused_request_is_a_rate_limit_error(make_client):
    client = make_client(_require("KEYGATE_RPM1_REFUSED_KEY"))
    client.messages.create(model="mock-model", max_tokens=5, messages=messages())
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.create(model="mock-model", max_tokens=5, messages=messages())
    error = refused.value
    assert error.status_code == 429
    assert int(error.response.headers["retry-after"]) >= 1
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.body["type"] == "error"
    assert error.body["error"]["type"] == "rate_limit_error"
    assert "rpm" in error.body["error"]["message"]


def test_a_bad_key_is_an_authentication_error(make_client):
    client = make_client("kg_not-a-real-key")
    with pytest.raises(anthropic.AuthenticationError) as refused:
        client.messages.create(model="mock-model", max_tokens=5, messages=messages())
    assert refused.value.status_code == 401
    assert refused.value.body["error"]["type"] == "authentication_error"


def test_an_unknown_model_is_not_found(client):
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="gpt-4o-mini", max_tokens=5, messages=messages())
