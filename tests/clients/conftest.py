"""Shared helpers for the client tests. run.sh starts the servers and sets:
FLAMINGO_URL (no API keys), FLAMINGO_KEYED_URL + FLAMINGO_KEY (API keys configured)."""

import base64
import json
import os
import pathlib
import urllib.error
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
IMAGES = ROOT / "tests/fixtures/tiny-openflamingo/images"


def _env(name):
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set: run tests/clients/run.sh", returncode=2)
    return value


@pytest.fixture(scope="session")
def url():
    return _env("FLAMINGO_URL")


@pytest.fixture(scope="session")
def keyed():
    return _env("FLAMINGO_KEYED_URL"), _env("FLAMINGO_KEY")


def image_b64(name="checker"):
    return base64.b64encode((IMAGES / f"{name}.png").read_bytes()).decode()


def post(base, path, body, headers=None):
    """Raw POST with the standard library: (status, headers, parsed JSON or text)."""
    req = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            status, hdrs, raw = r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        status, hdrs, raw = e.code, e.headers, e.read().decode()
    try:
        return status, hdrs, json.loads(raw)
    except json.JSONDecodeError:
        return status, hdrs, raw


def generate(base, inputs, images=(), **parameters):
    """generated_text of a raw POST /generate (the reference the clients are compared with)."""
    status, _, body = post(base, "/generate", {"inputs": inputs, "images": list(images), "parameters": parameters})
    assert status == 200, body
    return body
