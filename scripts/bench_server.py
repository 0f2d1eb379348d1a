#!/usr/bin/env python3
"""Server benchmark (not a test): throughput and latency percentiles at several concurrencies for
1-image caption requests (20 greedy tokens), the ratio throughput(16)/throughput(1), and the
per-request overhead outside the model (client latency minus the server's queue+generate time from
its Server-Timing header; at concurrency 1 the queue time is the image encoding).

  python3 scripts/bench_server.py --model-dir tests/fixtures/tiny-openflamingo
  python3 scripts/bench_server.py --model-dir /work/medium/medium-openflamingo --requests-per-level 32
  python3 scripts/bench_server.py --url http://127.0.0.1:8080        # an already running server
Stdlib only; loopback only; stops by itself.
"""
import argparse, base64, http.client, json, os, signal, socket, statistics, subprocess, sys, threading, time
from urllib.parse import urlparse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def request(host, port, body):
    t = time.perf_counter()
    c = http.client.HTTPConnection(host, port, timeout=600)
    c.request("POST", "/generate", body=body, headers={"content-type": "application/json"})
    r = c.getresponse(); data = r.read(); dt = time.perf_counter() - t
    timing = {k: float(v) for k, v in (p.strip().split(";dur=") for p in (r.getheader("server-timing") or "").split(",") if ";dur=" in p)}
    c.close()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {data[:200]}")
    return dt, timing, json.loads(data)["details"]["generated_tokens"]


def pct(v, q):
    v = sorted(v); return v[min(len(v) - 1, int(q * len(v)))]


def level(host, port, body, concurrency, n):
    lat, over, toks, lock = [], [], [0], threading.Lock()
    todo = list(range(n))
    def worker():
        while True:
            with lock:
                if not todo: return
                todo.pop()
            dt, timing, ntok = request(host, port, body)
            with lock:
                lat.append(dt); toks[0] += ntok
                over.append(dt * 1e3 - timing.get("queue", 0) - timing.get("model", timing.get("generate", 0)))
    t = time.perf_counter()
    ths = [threading.Thread(target=worker) for _ in range(concurrency)]
    [th.start() for th in ths]; [th.join() for th in ths]
    wall = time.perf_counter() - t
    return {"concurrency": concurrency, "requests": n, "req_per_s": n / wall, "tokens_per_s": toks[0] / wall,
            "p50_ms": pct(lat, .5) * 1e3, "p95_ms": pct(lat, .95) * 1e3, "p99_ms": pct(lat, .99) * 1e3,
            "overhead_p50_ms": statistics.median(over)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url"); ap.add_argument("--model-dir", default="tests/fixtures/tiny-openflamingo")
    ap.add_argument("--levels", default="1,4,16,64"); ap.add_argument("--requests-per-level", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--image", default=os.path.join(ROOT, "tests/fixtures/tiny-openflamingo/images/checker.png"))
    a = ap.parse_args()
    proc = None
    if a.url:
        u = urlparse(a.url); host, port = u.hostname, u.port
    else:
        host, port = "127.0.0.1", free_port()
        exe = os.path.join(ROOT, "target/release/flamingo-server")
        env = dict(os.environ, FLAMINGO_LIMITS_MAX_QUEUE="1024", FLAMINGO_LIMITS_MAX_BATCH_SIZE="64")
        proc = subprocess.Popen([exe, "--host", host, "--port", str(port), "--model-dir", a.model_dir], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                c = http.client.HTTPConnection(host, port, timeout=2); c.request("GET", "/ready")
                if c.getresponse().status == 200: break
            except OSError: pass
            time.sleep(0.2)
    try:
        img = base64.b64encode(open(a.image, "rb").read()).decode()
        body = json.dumps({"inputs": "<image>Output:", "images": [img],
                           "parameters": {"max_new_tokens": a.max_new_tokens, "stop": ["\u2581never\u2581"], "details": True}})
        request(host, port, body)  # warm-up (image encode, caches)
        rows = [level(host, port, body, c, max(a.requests_per_level, c)) for c in map(int, a.levels.split(","))]
        print(f"{'conc':>5} {'req/s':>8} {'tok/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'overhead p50 ms':>16}")
        for r in rows:
            print(f"{r['concurrency']:>5} {r['req_per_s']:>8.2f} {r['tokens_per_s']:>8.1f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['overhead_p50_ms']:>16.2f}")
        by = {r["concurrency"]: r for r in rows}
        if 1 in by and 16 in by:
            print(f"throughput(16)/throughput(1) = {by[16]['tokens_per_s'] / by[1]['tokens_per_s']:.2f}")
        print(json.dumps(rows))
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM); proc.wait(timeout=60)


if __name__ == "__main__":
    main()
