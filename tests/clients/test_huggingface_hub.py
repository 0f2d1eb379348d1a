"""huggingface_hub's InferenceClient, unmodified, against TGI's route `POST /` (what
`InferenceClient(base_url).text_generation(...)` posts to)."""

import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError, TextGenerationError, ValidationError
from huggingface_hub.inference._generated.types import TextGenerationOutput, TextGenerationStreamOutput

from conftest import generate, image_b64, post

MAX = 8


def prompt(name="checker"):
    # TGI's inline image: the server turns it into `<image>` in place.
    return f"![](data:image/png;base64,{image_b64(name)})Output:"


def reference(url, **parameters):
    return generate(url, "<image>Output:", [image_b64()], max_new_tokens=MAX, **parameters)


def test_text_generation_plain(url):
    text = InferenceClient(base_url=url).text_generation(prompt(), max_new_tokens=MAX)
    assert isinstance(text, str)
    assert text == reference(url)["generated_text"]


def test_text_generation_stream(url):
    # Keep the client referenced while streaming: huggingface_hub closes its open responses
    # when the client is garbage-collected.
    c = InferenceClient(base_url=url)
    tokens = list(c.text_generation(prompt(), max_new_tokens=MAX, stream=True))
    expected = reference(url, details=True)
    assert all(isinstance(t, str) for t in tokens)
    assert len(tokens) == expected["details"]["generated_tokens"]
    assert "".join(tokens) == expected["generated_text"]


def test_text_generation_details(url):
    out = InferenceClient(base_url=url).text_generation(prompt(), max_new_tokens=MAX, details=True)
    expected = reference(url, details=True)
    assert isinstance(out, TextGenerationOutput)
    assert out.generated_text == expected["generated_text"]
    d = out.details
    assert d.finish_reason == expected["details"]["finish_reason"]
    assert d.finish_reason in ("length", "eos_token", "stop_sequence")
    assert d.generated_tokens == len(d.tokens) == expected["details"]["generated_tokens"]
    assert [t.id for t in d.tokens] == [t["id"] for t in expected["details"]["tokens"]]
    assert all(isinstance(t.logprob, float) and t.logprob <= 0 for t in d.tokens)
    assert d.prefill == []


def test_text_generation_stream_details(url):
    c = InferenceClient(base_url=url)
    events = list(c.text_generation(prompt(), max_new_tokens=MAX, stream=True, details=True))
    expected = reference(url, details=True)
    assert all(isinstance(e, TextGenerationStreamOutput) for e in events)
    assert [e.token.id for e in events] == [t["id"] for t in expected["details"]["tokens"]]
    assert all(e.details is None and e.generated_text is None for e in events[:-1])
    last = events[-1]
    assert last.generated_text == expected["generated_text"]
    assert last.details.finish_reason == expected["details"]["finish_reason"]
    assert last.details.generated_tokens == len(events)


def test_sampling_parameters_and_seed(url):
    c = InferenceClient(base_url=url)
    kwargs = dict(max_new_tokens=MAX, do_sample=True, temperature=0.8, top_k=20, top_p=0.9, seed=7, details=True)
    a = c.text_generation(prompt(), **kwargs)
    b = c.text_generation(prompt(), **kwargs)
    assert a.details.seed == 7
    assert a.generated_text == b.generated_text


def test_stop_sequence_and_return_full_text(url):
    c = InferenceClient(base_url=url)
    full = c.text_generation("Hello", max_new_tokens=MAX, return_full_text=True)
    assert full.startswith("Hello")
    plain = c.text_generation("Hello", max_new_tokens=MAX)
    assert full == "Hello" + plain


def test_validation_error_is_raised_as_such(url):
    c = InferenceClient(base_url=url)
    # One `<image>` marker and no image: 422 validation.
    with pytest.raises(ValidationError) as e:
        c.text_generation("<image>Output:", max_new_tokens=MAX)
    assert e.value.__cause__.response.status_code == 422
    with pytest.raises(ValidationError):
        list(c.text_generation("<image>Output:", max_new_tokens=MAX, stream=True))


def test_api_keys(keyed):
    base, key = keyed
    with pytest.raises(TextGenerationError) as e:
        InferenceClient(base_url=base, api_key="wrong").text_generation("Hi", max_new_tokens=2)
    cause = e.value.__cause__
    assert isinstance(cause, HfHubHTTPError) and cause.response.status_code == 401
    assert InferenceClient(base_url=base, api_key=key).text_generation("Hi", max_new_tokens=2) is not None
    # Without a key POST / is refused, while GET / (the demo page) stays public.
    status, headers, body = post(base, "/", {"inputs": "Hi", "parameters": {"max_new_tokens": 2}})
    assert status == 401 and body["error_type"] == "unauthorized", body
    assert headers["www-authenticate"] == "Bearer"


def test_compat_route_answers_like_the_tgi_routes(url):
    body = {"inputs": "<image>Output:", "images": [image_b64()], "parameters": {"max_new_tokens": MAX}}
    status, headers, plain = post(url, "/", body)
    assert status == 200 and headers["content-type"].startswith("application/json"), plain
    assert plain == post(url, "/generate", body)[2]
    assert post(url, "/", {**body, "stream": False})[2] == plain
    status, headers, events = post(url, "/", {**body, "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert isinstance(events, str) and events.count("data:") >= 1
    # A malformed body gets /generate's error.
    status, _, err = post(url, "/", {"inputs": 5})
    assert status == 422 and err["error_type"] == "validation", err


def test_top_n_tokens(url):
    client = InferenceClient(url)
    out = client.text_generation(prompt(), max_new_tokens=6, details=True, top_n_tokens=3)
    assert len(out.details.top_tokens) == len(out.details.tokens)
    assert all(len(top) <= 3 for top in out.details.top_tokens)
    # Keep the client referenced while the stream is read (it owns the connection).
    events = list(client.text_generation(prompt(), max_new_tokens=6, stream=True, details=True, top_n_tokens=2))
    assert events and all(e.top_tokens is not None and len(e.top_tokens) <= 2 for e in events)
