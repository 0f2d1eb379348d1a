"""The README's client examples are these tests' examples: every file in examples/ appears
verbatim in a fenced block of the README, and every README shell block that calls the server
with curl is run (after pointing 127.0.0.1:8080 at the test server)."""

import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT, generate, image_b64

EXAMPLES = ROOT / "tests/clients/examples"
DEFAULT = "127.0.0.1:8080"


def readme_blocks():
    text = (ROOT / "README.md").read_text()
    return [(lang, body) for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def run(code, url, *cmd):
    host = url.removeprefix("http://")
    assert DEFAULT in code, "an example that does not address the server"
    p = subprocess.run(
        [*cmd, code.replace(DEFAULT, host)], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p.stdout


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.iterdir()))
def test_example_is_in_the_readme_verbatim(name):
    example = (EXAMPLES / name).read_text()
    lang = "python" if name.endswith(".py") else "bash"
    assert (lang, example) in readme_blocks(), f"README has no ```{lang} block equal to tests/clients/examples/{name}"


def test_readme_curl_blocks_run(url):
    blocks = [b for lang, b in readme_blocks() if lang == "bash" and re.search(rf"curl .*{re.escape(DEFAULT)}", b)]
    assert len(blocks) >= 2, "the README's curl examples were not found"
    expected = generate(url, "<image>Output:", [image_b64()], max_new_tokens=10)["generated_text"]
    for block in blocks:
        out = run("set -euo pipefail\n" + block, url, "bash", "-c")
        # Every JSON answer in the output is a successful one for the same prompt.
        answers = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert answers, out
        for a in answers:
            assert "error" not in a, a
            text = a.get("generated_text") or a["choices"][0]["message"]["content"]
            assert text == expected, a


def test_curl_example_streams_through_the_compat_route(url):
    out = run((EXAMPLES / "curl.sh").read_text(), url, "bash", "-c")
    events = [json.loads(line[5:]) for line in out.splitlines() if line.startswith("data:")]
    expected = generate(url, "<image>Output:", [image_b64()], max_new_tokens=10, details=True)
    assert len(events) == expected["details"]["generated_tokens"]
    assert events[-1]["generated_text"] == expected["generated_text"]
    assert "".join(e["token"]["text"] for e in events) == expected["generated_text"]


def test_openai_example(url):
    out = run((EXAMPLES / "openai_chat.py").read_text(), url, sys.executable, "-c")
    expected = generate(url, "<image>Output:", [image_b64()], max_new_tokens=10)["generated_text"]
    lines = out.splitlines()
    assert lines[0].startswith(repr(expected) + " "), out
    assert lines[0].split()[-1] in ("stop", "length")
    assert lines[1] == repr(expected)


def test_huggingface_hub_example(url):
    out = run((EXAMPLES / "hf_text_generation.py").read_text(), url, sys.executable, "-c")
    expected = generate(url, "<image>Output:", [image_b64()], max_new_tokens=10, details=True)
    d = expected["details"]
    assert out.splitlines() == [
        repr(expected["generated_text"]),
        repr(expected["generated_text"]),
        f"{d['finish_reason']} {d['generated_tokens']} {[t['id'] for t in d['tokens']]}",
    ]
