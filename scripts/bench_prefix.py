#!/usr/bin/env python3
"""Prefix reuse (not a test, not in CI): time to first token of few-shot requests whose examples
were seen before, and of each turn of a chat, with the prefix cache off vs on.

The script starts target/release/flamingo-server twice on free loopback ports with --model-dir,
limits.prefix_cache_bytes = 0 and = --cache-bytes, and sends each request below to both, one
request at a time, alternating which server goes first (so load drifts on a shared machine hit
both alike), over /generate_stream (TTFT = time to the first streamed token event):

  * a --shots-shot caption prompt (shots + 1 images): a warm-up request (the first request of the
    server; the images' features are then cached in both variants, so only the prefix cache
    differs); --reps cold requests (same images, examples whose text was not seen before); one
    request that shows the examples; --reps requests with those examples and a new query image
    each (under the v1 rule the last example's caption attends to the query image, so the first
    shots - 1 examples are what can be reused); --reps exact repeats (all examples reusable);
  * --chats chats of --turns turns, one after another (one image in the first user message, a
    new image per chat; each turn resends the history with the previous answers, each closed by
    <|endofchunk|> as the chat route renders it); median TTFT per turn.

It prints TTFT per kind and variant (median where repeated) and the server's prefix cache
counters. The content filter is off (it would hold the random model's unspaced output).

  python3 scripts/bench_prefix.py --model-dir /work/medium/medium-openflamingo
Stdlib only; loopback only; stops by itself.
"""
import argparse, base64, http.client, json, os, socket, statistics, struct, subprocess, time, zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def png(width, height, seed):
    raw = b"".join(b"\0" + bytes(((x * 7 + y * 3 + seed * 11) % 256, (x + seed) % 256, (y * 5 + seed) % 256)[c]
                                 for x in range(width) for c in range(3)) for y in range(height))
    chunk = lambda tag, data: struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def b64png(seed):
    return base64.b64encode(png(64, 48, seed)).decode()


def start(binary, model_dir, cache_bytes, port):
    env = dict(os.environ, FLAMINGO_LIMITS_PREFIX_CACHE_BYTES=str(cache_bytes), FLAMINGO_FILTER_MODE="off",
               FLAMINGO_LIMITS_MAX_IMAGES="64", FLAMINGO_LIMITS_MAX_INPUT_TOKENS="2000", RUST_LOG="warn")
    p = subprocess.Popen([binary, "--model-dir", model_dir, "--host", "127.0.0.1", "--port", str(port)],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/ready")
            if c.getresponse().status == 200:
                return p
        except OSError:
            pass
        if p.poll() is not None:
            raise SystemExit("server exited")
        time.sleep(0.2)
    p.kill()
    raise SystemExit("server not ready")


def stream(port, prompt, images, max_new_tokens):
    """(ttft s, generated text)"""
    body = json.dumps({"inputs": prompt, "images": images, "parameters": {"max_new_tokens": max_new_tokens}})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    t = time.perf_counter()
    c.request("POST", "/generate_stream", body, {"content-type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit(f"status {r.status}: {r.read()[:300]}")
    ttft, text = None, ""
    for line in r:
        if line.startswith(b"data:"):
            if ttft is None:
                ttft = time.perf_counter() - t
            ev = json.loads(line[5:])
            if ev.get("generated_text") is not None:
                text = ev["generated_text"]
    c.close()
    return ttft, text


def metrics(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("flamingo_prefix_cache_"):
            name, value = line.rsplit(" ", 1)
            out[name.replace("flamingo_prefix_cache_", "")] = float(value)
    return out


CAPTIONS = [
    "A brown dog runs across a wide green field towards a red ball on a sunny afternoon.",
    "Two people ride bicycles along a quiet road lined with tall trees in the autumn.",
    "A small kitchen with white cabinets, a wooden table and a bowl of fresh fruit.",
    "A train crosses a stone bridge over a river while clouds gather above the hills.",
    "A cat sleeps on a window sill next to a potted plant in the morning light.",
    "Several boats are tied up at a wooden dock on a calm lake surrounded by mountains.",
    "A child holds a large kite on a windy beach with waves breaking behind her.",
    "A plate of pasta with tomato sauce and basil sits on a checkered tablecloth.",
]

QUESTIONS = [
    "Describe this picture in detail.",
    "What colours stand out the most, and where are they?",
    "Is there anything unusual about the lower left corner?",
    "Could this be a photograph of a real place? Explain why.",
    "Summarise our conversation so far in one sentence.",
    "What would you change to make the picture more striking?",
]


def each(ports, i, send):
    """send(port) on every server, alternating the order, so load drifts hit both alike."""
    order = list(range(len(ports))) if i % 2 == 0 else list(reversed(range(len(ports))))
    out = [None] * len(ports)
    for k in order:
        out[k] = send(ports[k])
    return out


def few_shot(ports, shots, reps, tokens):
    """Per server: (cold, new query image, exact repeat) lists of TTFT."""
    def prompt(variant):
        return "".join(f"<image>Output:{variant}{CAPTIONS[i % len(CAPTIONS)]}<|endofchunk|>"
                       for i in range(shots)) + "<image>Output:"
    examples = [b64png(10 + i) for i in range(shots)]
    ttft = lambda text, images: lambda port: stream(port, text, images, tokens)[0]
    # Warm-up: the server's first request, and the images' features get cached.
    each(ports, 0, ttft(prompt("Warm-up. "), examples + [b64png(500)]))
    # Cold: examples never seen (other caption text each time), same images.
    cold = [each(ports, i, ttft(prompt(f"Set {i}. "), examples + [b64png(500)])) for i in range(reps)]
    seen = prompt("")
    each(ports, 0, ttft(seen, examples + [b64png(500)]))
    new_query = [each(ports, i, ttft(seen, examples + [b64png(501 + i)])) for i in range(reps)]
    repeat = [each(ports, i, ttft(seen, examples + [b64png(500)])) for i in range(reps)]
    return [([r[k] for r in cold], [r[k] for r in new_query], [r[k] for r in repeat]) for k in range(len(ports))]


def chat(ports, turns, tokens, seed):
    """Per server: TTFT of each turn."""
    image = b64png(900 + seed)
    history = [""] * len(ports)
    out = [[] for _ in ports]
    for t in range(turns):
        def send(port):
            k = ports.index(port)
            prompt = history[k] + ("<image>" if t == 0 else "") + f"User: {QUESTIONS[t % len(QUESTIONS)]} GPT:"
            ttft, text = stream(port, prompt, [image], tokens)
            answer = text.replace("<image>", "").replace("<|endofchunk|>", "")
            history[k] = prompt + answer + "<|endofchunk|>"
            return ttft
        for k, v in enumerate(each(ports, t + seed, send)):
            out[k].append(v)
    return out


def med(xs):
    return statistics.median(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--server-bin", default=os.path.join(ROOT, "target/release/flamingo-server"))
    ap.add_argument("--cache-bytes", type=int, default=1 << 30)
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--chats", type=int, default=5, help="chats (each with its own image); median per turn")
    ap.add_argument("--tokens", type=int, default=8, help="max_new_tokens per request")
    args = ap.parse_args()
    servers, ports = [], []
    try:
        for cache in (0, args.cache_bytes):
            ports.append(free_port())
            servers.append(start(args.server_bin, args.model_dir, cache, ports[-1]))
        fs = few_shot(ports, args.shots, args.reps, args.tokens)
        chats = [chat(ports, args.turns, args.tokens, c) for c in range(args.chats)]
        ch = [[statistics.median(c[k][t] for c in chats) for t in range(args.turns)] for k in range(2)]
        m = metrics(ports[1])
    finally:
        for p in servers:
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    print(f"model: {args.model_dir}; {args.shots}-shot, {args.reps} requests per kind, "
          f"max_new_tokens {args.tokens}; TTFT in ms (median where repeated)")
    print(f"{'request':<44}{'cache off':>11}{'cache on':>11}{'on/off':>8}")
    def row(label, off, on):
        print(f"{label:<44}{off*1e3:>11.1f}{on*1e3:>11.1f}{on/off:>8.2f}")
    (fo, fn), (co, cn) = fs, ch
    row(f"{args.shots}-shot, examples not seen before", med(fo[0]), med(fn[0]))
    row(f"{args.shots}-shot, same examples, new query image", med(fo[1]), med(fn[1]))
    row(f"{args.shots}-shot, repeated exactly", med(fo[2]), med(fn[2]))
    for t, (a, b) in enumerate(zip(co, cn)):
        row(f"chat turn {t + 1}", a, b)
    print("prefix cache counters (cache on):", {k: int(v) for k, v in sorted(m.items())})


if __name__ == "__main__":
    main()
