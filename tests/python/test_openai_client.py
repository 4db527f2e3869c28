"""keygate's OpenAI-compatible proxy, used through the official `openai` SDK.

The upstream behind keygate is the mock of tests/support/upstream.rs. Its answers are
deterministic:
  * reply (per choice) = the first min(max_tokens, 7) words of REPLY_WORDS, one word =
    one completion token; finish_reason "length" when cut short, else "stop";
  * chat prompt tokens = sum over messages of (3 + words of the content);
  * legacy-completion / embedding prompt tokens = words of the prompt / input;
  * embeddings have 8 dimensions;
  * `mock-error-400` / `mock-error-500` answer OpenAI-style errors.

Run through `cargo test --test python_clients -- --nocapture`.
"""

import asyncio

import openai
import pytest

MODEL = "mock-model"
REPLY_WORDS = ["Hello", "there", "this", "is", "a", "test", "reply"]
FULL_REPLY = " ".join(REPLY_WORDS)
PER_MESSAGE_TOKENS = 3
EMBEDDING_DIMS = 8
# The mock's own rate-limit headers: keygate must replace them with its own.
UPSTREAM_RATELIMIT_VALUES = {
    "x-ratelimit-limit-requests": "9999",
    "x-ratelimit-remaining-requests": "9998",
    "x-ratelimit-limit-tokens": "1999999",
    "x-ratelimit-remaining-tokens": "1999990",
}


def words(text):
    return len(text.split())


def chat_prompt_tokens(messages):
    return sum(PER_MESSAGE_TOKENS + words(m["content"]) for m in messages)


def reply(max_tokens=None):
    n = len(REPLY_WORDS) if max_tokens is None else min(max_tokens, len(REPLY_WORDS))
    return " ".join(REPLY_WORDS[:n])


MESSAGES = [
    {"role": "system", "content": "You are a terse assistant"},
    {"role": "user", "content": "Say hello to the gateway please"},
]
MESSAGES_PROMPT_TOKENS = chat_prompt_tokens(MESSAGES)  # (3 + 4) + (3 + 6) = 16


def chat(client, **kwargs):
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("messages", MESSAGES)
    return client.chat.completions.create(**kwargs)


def assert_openai_error(err, status, code):
    """What every keygate refusal looks like through the SDK."""
    assert err.status_code == status, err
    assert err.response.status_code == status
    assert err.code == code, (err.code, err.body)
    assert isinstance(err.body, dict), err.body
    assert isinstance(err.body.get("message"), str) and err.body["message"], err.body
    # The SDK puts the body's message into the exception text.
    assert err.body["message"] in str(err)
    assert err.response.headers.get("content-type", "").startswith("application/json")


# ---------------------------------------------------------------------------
# successful calls


def test_chat_completion_content_and_usage(client):
    completion = chat(client)
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == FULL_REPLY
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == MESSAGES_PROMPT_TOKENS
    assert completion.usage.completion_tokens == len(REPLY_WORDS)
    assert completion.usage.total_tokens == MESSAGES_PROMPT_TOKENS + len(REPLY_WORDS)


def test_chat_completion_max_tokens_and_n(client):
    completion = chat(client, max_tokens=3, n=2)
    assert [c.index for c in completion.choices] == [0, 1]
    for choice in completion.choices:
        assert choice.message.content == reply(3)
        assert choice.finish_reason == "length"
    assert completion.usage.prompt_tokens == MESSAGES_PROMPT_TOKENS
    assert completion.usage.completion_tokens == 3 * 2
    assert completion.usage.total_tokens == MESSAGES_PROMPT_TOKENS + 6


def test_streaming_chat_without_include_usage_hides_the_usage_chunk(client):
    stream = chat(client, stream=True)
    chunks = list(stream)
    assert chunks, "no chunk arrived"
    text = ""
    finish_reasons = []
    for chunk in chunks:
        assert chunk.object == "chat.completion.chunk"
        # keygate asks the upstream for usage on the client's behalf; the client did not
        # ask, so it must not see it: no usage object and no choice-less usage chunk.
        assert chunk.usage is None, chunk
        assert len(chunk.choices) == 1, chunk
        delta = chunk.choices[0].delta
        text += delta.content or ""
        if chunk.choices[0].finish_reason:
            finish_reasons.append(chunk.choices[0].finish_reason)
    assert text == FULL_REPLY
    assert chunks[0].choices[0].delta.role == "assistant"
    assert finish_reasons == ["stop"]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_streaming_chat_with_include_usage(client):
    stream = chat(client, stream=True, max_tokens=5, stream_options={"include_usage": True})
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == MESSAGES_PROMPT_TOKENS
    assert last.usage.completion_tokens == 5
    assert last.usage.total_tokens == MESSAGES_PROMPT_TOKENS + 5
    # Exactly one chunk carries usage, and the text is intact.
    assert [c for c in chunks if c.usage is not None] == [last]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply(5)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]


def test_streaming_chat_with_include_usage_false(client):
    chunks = list(chat(client, stream=True, stream_options={"include_usage": False}))
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == FULL_REPLY


def test_legacy_completion(client):
    prompt = "Once upon a time there"
    completion = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6)
    assert completion.object == "text_completion"
    assert len(completion.choices) == 1
    assert completion.choices[0].text == reply(6)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.prompt_tokens == words(prompt)
    assert completion.usage.completion_tokens == 6
    assert completion.usage.total_tokens == words(prompt) + 6


def test_legacy_completion_streaming(client):
    chunks = list(client.completions.create(model=MODEL, prompt="Tell me", stream=True))
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == FULL_REPLY


def test_embeddings(client):
    inputs = ["the quick brown fox", "jumps"]
    # The SDK asks for base64 by default and decodes it; ask for floats too.
    for encoding in (openai.NOT_GIVEN, "float"):
        result = client.embeddings.create(model=MODEL, input=inputs, encoding_format=encoding)
        assert result.object == "list"
        assert [d.index for d in result.data] == [0, 1]
        for item in result.data:
            assert item.object == "embedding"
            assert len(item.embedding) == EMBEDDING_DIMS
            assert all(isinstance(x, float) and -1.0 <= x <= 1.0 for x in item.embedding)
        assert result.data[0].embedding != result.data[1].embedding
        assert result.usage.prompt_tokens == 4 + 1
        assert result.usage.total_tokens == 4 + 1


def test_models_list(client):
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids
    assert len(ids) == len(set(ids)), ids
    # The wildcard upstream's own list is shown (mock's MODEL_IDS).
    assert {"gpt-4o-mini", "text-embedding-3-small"} <= set(ids)


def test_models_list_with_allowed_models(make_client, keys):
    ids = [m.id for m in make_client(keys["allowed"]).models.list()]
    assert ids == [MODEL]


def test_allowed_model_can_be_used(make_client, keys):
    completion = chat(make_client(keys["allowed"]))
    assert completion.choices[0].message.content == FULL_REPLY


def test_raw_response_carries_rate_limit_headers_and_request_id(make_client, keys):
    client = make_client(keys["rpm1"])
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    assert raw.status_code == 200
    headers = raw.headers
    # keygate's own view of the key's limits (rpm = 1, this request used it), not the
    # upstream's (which the mock sets to 9999 / 9998 / 6ms).
    assert headers.get("x-ratelimit-limit-requests") == "1", dict(headers)
    assert headers.get("x-ratelimit-remaining-requests") == "0", dict(headers)
    reset = headers.get("x-ratelimit-reset-requests")
    assert reset and reset.endswith("s") and reset != "6ms", dict(headers)
    # No token limit on this key: the upstream's token headers must not leak through.
    for name, upstream_value in UPSTREAM_RATELIMIT_VALUES.items():
        assert headers.get(name) != upstream_value, (name, dict(headers))
    assert headers.get("x-request-id"), dict(headers)
    assert raw.request_id == headers.get("x-request-id")
    completion = raw.parse()
    assert completion.choices[0].message.content == FULL_REPLY
    assert completion.usage.total_tokens == MESSAGES_PROMPT_TOKENS + len(REPLY_WORDS)


def test_async_client_streaming(make_async_client, keys):
    async def run():
        async with make_async_client(keys["plain"]) as client:
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
            return chunks

    chunks = asyncio.run(run())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == FULL_REPLY
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == MESSAGES_PROMPT_TOKENS
    assert chunks[-1].usage.completion_tokens == len(REPLY_WORDS)


# ---------------------------------------------------------------------------
# refusals, as the SDK's own exception classes


def test_bad_key_is_authentication_error(make_client):
    client = make_client("kg_this-is-not-a-real-key")
    with pytest.raises(openai.AuthenticationError) as info:
        chat(client)
    assert_openai_error(info.value, 401, "invalid_api_key")
    assert info.value.type == "authentication_error"


def test_unknown_well_formed_key_is_authentication_error(make_client, keys):
    # Same shape as a real key, one character changed.
    real = keys["plain"]
    forged = real[:-1] + ("A" if real[-1] != "A" else "B")
    with pytest.raises(openai.AuthenticationError) as info:
        make_client(forged).models.list()
    assert_openai_error(info.value, 401, "invalid_api_key")


def test_revoked_key_is_authentication_error(make_client, keys):
    with pytest.raises(openai.AuthenticationError) as info:
        chat(make_client(keys["revoked"]))
    assert_openai_error(info.value, 401, "invalid_api_key")
    assert "revoked" in info.value.body["message"]


def test_zero_budget_is_402_budget_exceeded(make_client, keys):
    with pytest.raises(openai.APIStatusError) as info:
        chat(make_client(keys["budget0"]))
    err = info.value
    # 402 has no dedicated SDK class.
    assert type(err) is openai.APIStatusError, type(err)
    assert_openai_error(err, 402, "budget_exceeded")


def test_model_outside_allowed_models_is_permission_denied(make_client, keys):
    with pytest.raises(openai.PermissionDeniedError) as info:
        chat(make_client(keys["allowed"]), model="gpt-4o-mini")
    assert_openai_error(info.value, 403, "model_not_allowed")
    assert info.value.param == "model"
    assert "gpt-4o-mini" in info.value.body["message"]


def test_admin_key_is_not_for_inference(make_client, keys):
    with pytest.raises(openai.PermissionDeniedError) as info:
        chat(make_client(keys["admin"]))
    assert_openai_error(info.value, 403, "admin_key_not_for_inference")


def test_rpm_limit_second_call_is_rate_limit_error(make_client, keys):
    client = make_client(keys["rpm1_refused"])
    first = chat(client)
    assert first.choices[0].message.content == FULL_REPLY
    with pytest.raises(openai.RateLimitError) as info:
        chat(client)
    err = info.value
    assert_openai_error(err, 429, "rate_limit_exceeded")
    assert "rpm" in err.body["message"], err.body
    retry_after = err.response.headers.get("retry-after")
    assert retry_after is not None, dict(err.response.headers)
    assert 1 <= int(retry_after) <= 60, retry_after
    # Refusals carry the rate-limit headers too.
    assert err.response.headers.get("x-ratelimit-limit-requests") == "1"
    assert err.response.headers.get("x-ratelimit-remaining-requests") == "0"
    assert err.response.headers.get("x-request-id")


def test_rpm_limit_refuses_streams_too(make_client, keys):
    # The key's single request of the minute was used by the test above, or is used now.
    client = make_client(keys["rpm1_refused"])
    try:
        list(chat(client, stream=True))
    except openai.RateLimitError:
        pass
    with pytest.raises(openai.RateLimitError) as info:
        chat(client, stream=True)
    assert_openai_error(info.value, 429, "rate_limit_exceeded")


def test_upstream_400_passes_through_as_bad_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, model="mock-error-400")
    err = info.value
    assert err.status_code == 400
    assert err.body["message"] == "bad thing"
    assert err.code == "bad_request"
    assert err.type == "invalid_request_error"
    assert "bad thing" in str(err)


def test_upstream_400_on_a_stream_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, model="mock-error-400", stream=True)
    assert info.value.body["message"] == "bad thing"


def test_upstream_500_is_internal_server_error(client):
    with pytest.raises(openai.InternalServerError) as info:
        chat(client, model="mock-error-500")
    err = info.value
    assert err.status_code == 500
    assert err.type == "server_error"
    assert err.body["message"]


def test_upstream_429_is_rate_limit_error(client):
    with pytest.raises(openai.RateLimitError) as info:
        chat(client, model="mock-error-429")
    assert info.value.code == "rate_limit_exceeded"
