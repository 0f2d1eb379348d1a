"""The served OpenAPI document against tools this project did not write: openapi-spec-validator
checks it is a valid OpenAPI 3.1 document, and every response below (real requests to the real
server, errors and streams included) is validated against the schema the document gives for its
route, status and content type, with openapi-schema-validator's OAS 3.1 validator. The request
bodies sent are validated against the documented request schemas too, so the spec cannot refuse
what the server serves nor describe a response the server does not send."""

import json
import urllib.request

import pytest
import yaml
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate as validate_spec

from conftest import ROOT, image_b64, post


@pytest.fixture(scope="session")
def doc(url):
    with urllib.request.urlopen(url + "/openapi.yaml", timeout=30) as r:
        assert r.headers["content-type"].startswith("application/yaml")
        text = r.read().decode()
    assert text == (ROOT / "openapi.yaml").read_text(), "the server serves another document than openapi.yaml"
    return yaml.safe_load(text)


def schema_of(doc, path, method, status, content_type="application/json", request=False):
    op = doc["paths"][path][method]
    if request:
        media = op["requestBody"]["content"][content_type]
    else:
        response = op["responses"][str(status)]
        if "$ref" in response:
            response = doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
        media = response["content"][content_type]
    # Local `$ref`s resolve against the document's components.
    return {**media["schema"], "components": doc["components"]}


def check(doc, instance, path, method, status, **kw):
    OAS31Validator(schema_of(doc, path, method, status, **kw)).validate(instance)


def send(doc, base, path, body, status=200):
    check(doc, body, path, "post", None, request=True)
    code, headers, answer = post(base, path, body)
    assert code == status, answer
    return headers, answer


def events(base, path, body):
    """The events of a server-sent event stream: `{"data": ..., "event"?: ...}`."""
    req = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    out, event = [], {}
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.read().decode().splitlines():
            if line.startswith("data:"):
                event["data"] = line[5:].strip()
            elif line.startswith("event:"):
                event["event"] = line[6:].strip()
            elif not line and event:
                out.append(event)
                event = {}
    assert out
    return out


def check_stream(doc, stream, path):
    """Each event against the documented event schema, and its JSON payload against the schema
    the event schema names (`contentSchema`, which validators only annotate)."""
    envelope = schema_of(doc, path, "post", 200, content_type="text/event-stream")
    name = envelope["$ref"].rsplit("/", 1)[1]
    data = doc["components"]["schemas"][name]["properties"]["data"]
    payload = next(d for d in data.get("anyOf", [data]) if "contentSchema" in d)["contentSchema"]
    payloads = []
    for event in stream:
        OAS31Validator(envelope).validate(event)
        if event["data"] == "[DONE]":
            continue
        assert "event" not in event, event
        body = json.loads(event["data"])
        OAS31Validator({**payload, "components": doc["components"]}).validate(body)
        payloads.append(body)
    return payloads


def test_the_document_is_valid_openapi_3_1(doc):
    assert doc["openapi"].startswith("3.1")
    validate_spec(doc)


def test_a_yaml_1_1_reader_sees_the_documented_values(doc):
    """PyYAML reads YAML 1.1: `off` would be a boolean, `3.4e38` a string."""

    def walk(node, where):
        if isinstance(node, dict):
            types = node.get("type")
            types = types if isinstance(types, list) else [types]
            for value in node.get("enum", []):
                assert value is None or not isinstance(value, bool) or "boolean" in types, where
                assert value is None or not isinstance(value, str) or "string" in types, where
            for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                assert key not in node or isinstance(node[key], (int, float)), f"{where}.{key}"
            for key, child in node.items():
                walk(child, f"{where}.{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{where}[{i}]")

    walk(doc, "$")


def test_generate_responses_match_the_spec(doc, url):
    body = {
        "inputs": "<image>Output:",
        "images": [image_b64()],
        "parameters": {"max_new_tokens": 4, "details": True, "decoder_input_details": True, "top_n_tokens": 2},
    }
    _, answer = send(doc, url, "/generate", body)
    assert answer["details"]["tokens"] and answer["details"]["top_tokens"]
    check(doc, answer, "/generate", "post", 200)
    check_stream(doc, events(url, "/generate_stream", body), "/generate_stream")
    check_stream(doc, events(url, "/", {**body, "stream": True}), "/")
    _, answer = send(doc, url, "/", {"inputs": "Hello", "parameters": {"max_new_tokens": 2}})
    check(doc, answer, "/", "post", 200)


def test_openai_responses_match_the_spec(doc, url):
    chat = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64," + image_b64()}},
                    {"type": "text", "text": "Output:"},
                ],
            }
        ],
        "max_tokens": 4,
        "n": 2,
        "logprobs": True,
        "top_logprobs": 2,
    }
    _, answer = send(doc, url, "/v1/chat/completions", chat)
    assert answer["choices"][1]["logprobs"] is not None
    check(doc, answer, "/v1/chat/completions", "post", 200)
    streamed = {**chat, "stream": True, "stream_options": {"include_usage": True}}
    chunks = check_stream(doc, events(url, "/v1/chat/completions", streamed), "/v1/chat/completions")
    assert chunks[-1]["usage"] is not None

    completion = {"prompt": "A photo of", "max_tokens": 4, "logprobs": 2, "n": 2, "seed": 3, "temperature": 0.7}
    _, answer = send(doc, url, "/v1/completions", completion)
    check(doc, answer, "/v1/completions", "post", 200)
    streamed = {**completion, "stream": True, "stream_options": {"include_usage": True}}
    check_stream(doc, events(url, "/v1/completions", streamed), "/v1/completions")


def test_other_routes_match_the_spec(doc, url):
    _, answer = send(doc, url, "/tokenize", {"inputs": "<image>Output: a cat"})
    check(doc, answer, "/tokenize", "post", 200)
    for path in ["/info", "/health", "/ready", "/v1/models"]:
        with urllib.request.urlopen(url + path, timeout=30) as r:
            check(doc, json.loads(r.read()), path, "get", 200)


def test_errors_match_the_spec(doc, url):
    code, _, answer = post(url, "/generate", {"inputs": "x", "parameters": {"top_p": 7}})
    assert code == 422
    check(doc, answer, "/generate", "post", 422)
    code, _, answer = post(url, "/v1/chat/completions", {"messages": [], "bogus": 1})
    assert code == 422
    check(doc, answer, "/v1/chat/completions", "post", 422)
    assert answer["error"]["param"] == "bogus"
    code, _, answer = post(url, "/v1/completions", {"prompt": "x", "suffix": "y"})
    assert code == 422
    check(doc, answer, "/v1/completions", "post", 422)
    # The spec refuses what the server refuses.
    with pytest.raises(Exception):
        check(doc, {"inputs": "x", "parameters": {"top_p": 7}}, "/generate", "post", None, request=True)
    with pytest.raises(Exception):
        check(doc, {"inputs": "x", "query": {"image": "y"}}, "/generate", "post", None, request=True)
