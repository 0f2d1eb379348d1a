"""The `openai` Python SDK, unmodified, against /v1."""

import openai
import pytest
from openai import OpenAI

from conftest import generate, image_b64

MAX = 8


def client(base, key="unused"):
    return OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)


def image_messages(name="checker"):
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image_b64(name)}"}},
                {"type": "text", "text": "Output:"},
            ],
        }
    ]


def test_chat_with_image_url_equals_generate(url):
    reply = client(url).chat.completions.create(model="openflamingo-9b", messages=image_messages(), max_tokens=MAX)
    assert reply.object == "chat.completion"
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    # The chat renders to `<image>Output:`; greedy decoding gives what /generate gives.
    expected = generate(url, "<image>Output:", [image_b64()], max_new_tokens=MAX, details=True)
    assert choice.message.content == expected["generated_text"]
    assert reply.usage.completion_tokens == expected["details"]["generated_tokens"]
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_multi_turn_few_shot_chat(url):
    messages = image_messages("gradient") + [{"role": "assistant", "content": "A gradient."}] + image_messages()
    reply = client(url).chat.completions.create(model="openflamingo-9b", messages=messages, max_tokens=MAX)
    expected = generate(
        url,
        "<image>Output:A gradient.<|endofchunk|><image>Output:",
        [image_b64("gradient"), image_b64()],
        max_new_tokens=MAX,
    )
    assert reply.choices[0].message.content == expected["generated_text"]


def test_stream_adds_up_to_the_plain_answer(url):
    c = client(url)
    plain = c.chat.completions.create(model="openflamingo-9b", messages=image_messages(), max_tokens=MAX)
    chunks = list(
        c.chat.completions.create(
            model="openflamingo-9b",
            messages=image_messages(),
            max_tokens=MAX,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks, "no chunks"
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == plain.choices[0].message.content
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_models_list(url):
    ids = [m.id for m in client(url).models.list()]
    assert len(ids) == 1 and ids[0]


def test_bad_image_raises_unprocessable_entity(url):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,not-an-image!"}},
                {"type": "text", "text": "Output:"},
            ],
        }
    ]
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client(url).chat.completions.create(model="openflamingo-9b", messages=messages, max_tokens=MAX)
    assert e.value.status_code == 422
    assert e.value.body["type"] == "validation"
    assert e.value.body["message"]


def test_bad_image_in_stream_raises_before_the_stream(url):
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    with pytest.raises(openai.UnprocessableEntityError) as e:
        list(client(url).chat.completions.create(model="openflamingo-9b", messages=messages, max_tokens=MAX, stream=True))
    assert e.value.status_code == 422


def test_api_keys(keyed):
    base, key = keyed
    with pytest.raises(openai.AuthenticationError) as e:
        client(base, "wrong").chat.completions.create(
            model="openflamingo-9b", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
    assert e.value.status_code == 401
    assert e.value.body["type"] == "unauthorized"
    reply = client(base, key).chat.completions.create(
        model="openflamingo-9b", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_logprobs_top_logprobs_and_n_choices(url):
    c = client(url)
    reply = c.chat.completions.create(
        model="openflamingo-9b", messages=image_messages(), max_tokens=MAX, logprobs=True, top_logprobs=3
    )
    content = reply.choices[0].logprobs.content
    assert content and "".join(t.token for t in content) == reply.choices[0].message.content
    assert all(len(t.top_logprobs) <= 3 and t.logprob <= 0 for t in content)
    reply = c.chat.completions.create(
        model="openflamingo-9b", messages=image_messages(), max_tokens=MAX, n=3, temperature=1.0, seed=7
    )
    assert [ch.index for ch in reply.choices] == [0, 1, 2]
    second = c.chat.completions.create(
        model="openflamingo-9b", messages=image_messages(), max_tokens=MAX, temperature=1.0, seed=8
    )
    assert reply.choices[1].message.content == second.choices[0].message.content
    with pytest.raises(openai.UnprocessableEntityError):
        c.chat.completions.create(model="openflamingo-9b", messages=image_messages(), max_tokens=MAX, store=True)


def test_legacy_completions(url):
    c = client(url)
    prompt = f"![](data:image/png;base64,{image_b64()})Output:"
    reply = c.completions.create(model="openflamingo-9b", prompt=prompt, max_tokens=MAX, logprobs=2)
    assert reply.object == "text_completion"
    expected = generate(url, "<image>Output:", [image_b64()], max_new_tokens=MAX)
    assert reply.choices[0].text == expected["generated_text"]
    assert "".join(reply.choices[0].logprobs.tokens) == reply.choices[0].text
    chunks = list(
        c.completions.create(
            model="openflamingo-9b", prompt=prompt, max_tokens=MAX, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == reply.choices[0].text
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
