#!/usr/bin/env python3
"""Chunked-prefill fairness (not a test, not in CI): inter-token latency of streaming captions while
long few-shot prompts keep arriving, with whole-prompt prefill vs chunked prefill.

For each variant (limits.max_prefill_chunk_tokens, 0 = whole prompts; and where new images are
encoded: limits.encode_images_in_preprocessing) the
script starts target/release/flamingo-server on a free loopback port with --model-dir, runs
--streams concurrent streaming captions (each --tokens tokens, one after another, for
--seconds) and, in a second phase, the same while a --shots-shot request (shots + 1 images, the
examples' images shared so their features come from the cache, the query image new each time)
arrives every --every seconds. It prints ITL p50/p99 per phase and the long requests' latency.
The content filter is off: it holds the random model's unspaced output until a word ends, which
would measure the filter, not the scheduler.

  python3 scripts/bench_fairness.py --model-dir /work/medium/medium-openflamingo [--variants 0:worker,64:prep]
Stdlib only; loopback only; stops by itself.
"""
import argparse, base64, http.client, json, os, socket, statistics, struct, subprocess, threading, time, zlib

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


def start(binary, model_dir, chunk, encode_in_prep, port):
    env = dict(os.environ, FLAMINGO_LIMITS_MAX_PREFILL_CHUNK_TOKENS=str(chunk), FLAMINGO_FILTER_MODE="off",
               FLAMINGO_LIMITS_ENCODE_IMAGES_IN_PREPROCESSING=str(encode_in_prep).lower(),
               FLAMINGO_LIMITS_MAX_IMAGES="64", FLAMINGO_LIMITS_MAX_INPUT_TOKENS="2000",
               FLAMINGO_LIMITS_MAX_BATCH_TOKENS="8192", RUST_LOG="warn")
    p = subprocess.Popen([binary, "--model-dir", model_dir, "--host", "127.0.0.1", "--port", str(port)],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/ready")
            if c.getresponse().status == 200:
                return p
        except OSError:
            pass
        time.sleep(0.2)
    p.kill()
    raise SystemExit("server not ready")


def stream_once(port, tokens, image, gaps):
    body = json.dumps({"inputs": "<image>Output:", "images": [image],
                       "parameters": {"max_new_tokens": tokens}})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("POST", "/generate_stream", body, {"content-type": "application/json"})
    r = c.getresponse()
    last = None
    for line in r:
        if line.startswith(b"data:"):
            now = time.perf_counter()
            if last is not None:
                gaps.append(now - last)
            last = now
    c.close()


def long_request(port, shots, examples, query, latencies):
    prompt = "".join(f"<image>Output:An example caption number {i} of a few words.<|endofchunk|>"
                     for i in range(shots)) + "<image>Output:"
    body = json.dumps({"inputs": prompt, "images": examples[:shots] + [query],
                       "parameters": {"max_new_tokens": 4}})
    t = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    c.request("POST", "/generate", body, {"content-type": "application/json"})
    r = c.getresponse(); r.read(); c.close()
    if r.status == 200:
        latencies.append(time.perf_counter() - t)
    else:
        print("  long request status", r.status)


def phase(port, args, with_long, examples):
    gaps, latencies, stop = [], [], time.time() + args.seconds
    def streamer(k):
        n = 0
        while time.time() < stop:
            stream_once(port, args.tokens, b64png(1000 + k * 1000 + n), gaps); n += 1
    threads = [threading.Thread(target=streamer, args=(k,)) for k in range(args.streams)]
    for t in threads: t.start()
    n = 0
    while with_long and time.time() < stop:
        t0 = time.time()
        long_request(port, args.shots, examples, b64png(50000 + n), latencies); n += 1
        time.sleep(max(0.0, args.every - (time.time() - t0)))
    for t in threads: t.join()
    return gaps, latencies


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--server-bin", default=os.path.join(ROOT, "target/release/flamingo-server"))
    ap.add_argument("--variants", default="0:worker,256:worker,256:prep",
                    help="comma-separated CHUNK:ENCODE, ENCODE = worker (the model worker encodes new images) "
                         "or prep (the request's preprocessing thread does)")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--shots", type=int, default=32)
    ap.add_argument("--every", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    examples = [b64png(i) for i in range(args.shots)]
    print(f"{args.streams} streams x {args.tokens} tokens; a {args.shots}-shot request every {args.every}s; "
          f"{args.seconds}s per phase; model {args.model_dir}")
    print(f"{'chunk:encode':>13} {'phase':>14} {'ITL p50 ms':>11} {'ITL p99 ms':>11} {'tokens':>7} {'long n':>6} {'long mean s':>11}")
    for variant in args.variants.split(","):
        chunk, encode = variant.split(":")
        chunk = int(chunk)
        port = free_port()
        p = start(args.server_bin, args.model_dir, chunk, encode == "prep", port)
        try:
            long_request(port, args.shots, examples, b64png(49999), [])  # warm the example features
            for name, with_long in [("streams only", False), ("+ long prompts", True)]:
                gaps, lat = phase(port, args, with_long, examples)
                print(f"{variant:>13} {name:>14} {pct(gaps, .5) * 1e3:>11.1f} {pct(gaps, .99) * 1e3:>11.1f} "
                      f"{len(gaps):>7} {len(lat):>6} {statistics.mean(lat) if lat else float('nan'):>11.2f}")
        finally:
            p.terminate(); p.wait(timeout=30)


if __name__ == "__main__":
    main()
