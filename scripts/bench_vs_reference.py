#!/usr/bin/env python3
"""Side by side (not a test, not in CI): the PyTorch reference (open_flamingo 0.0.2 `generate`, run by
scripts/bench_reference.py in its own venv) and our server on the same model folder, same prompts
(1-image caption, 2-shot with 3 images), 20 greedy tokens, f32, same thread count.

Reports the per-request latency ratio ours/reference (median of --repeats, sequential requests,
each image sent fresh so our image cache cannot help), checks both produce the same token ids, and
compares throughput of --concurrency simultaneous caption requests through the server against the
reference's best batched `generate` (one batch of the same size). Our concurrent requests carry
distinct image files (the same pixels with a different tEXt chunk, so a different cache key), so
every image is encoded, as in the reference; the same run with one shared image (cache hits) is
printed separately.

--interleave keeps the reference loaded in a second process and alternates the two request by
request (and batch by batch, --rounds times), so that the other tenants of a shared machine slow
both sides alike; it reports the median of the per-round ratios next to the medians.

  python3 scripts/bench_vs_reference.py --model-dir /work/medium/medium-openflamingo \\
      --ref-python /work/venvs/ref/bin/python [--threads 2] [--repeats 5] [--concurrency 16]
      [--interleave [--rounds 3]]
Stdlib only; loopback only; stops by itself.
"""
import argparse, base64, http.client, json, os, signal, socket, statistics, struct, subprocess, threading, time, zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTION = "<image>Output:"
TWO_SHOT = ("<image>Output:A red and green gradient.<|endofchunk|><image>Output:A checker board.<|endofchunk|>"
            "<image>Output:")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def png(width, height, pixel):
    """Minimal RGB PNG encoder; pixel(x, y) -> (r, g, b)."""
    raw = b"".join(b"\0" + bytes(c for x in range(width) for c in pixel(x, y)) for y in range(height))
    chunk = lambda tag, data: struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def post(port, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t = time.perf_counter()
    c.request("POST", "/generate", body=json.dumps(body), headers={"content-type": "application/json"})
    r = c.getresponse(); data = r.read(); dt = time.perf_counter() - t
    c.close()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {data[:300]}")
    return dt, [t["id"] for t in json.loads(data)["details"]["tokens"]]


def body(prompt, images, tokens):
    return {"inputs": prompt, "images": [base64.b64encode(i).decode() for i in images],
            "parameters": {"max_new_tokens": tokens, "do_sample": False, "details": True}}


def fresh(image, salt):
    """The same PNG with a tEXt chunk that changes its bytes (and so its cache key), not its pixels."""
    text = b"tEXt" + b"salt\0" + str(salt).encode()
    chunk = struct.pack(">I", len(text) - 4) + text + struct.pack(">I", zlib.crc32(text))
    return image[:33] + chunk + image[33:]


def concurrent(port, bodies):
    results, lock = [], threading.Lock()
    def one(b):
        dt, toks = post(port, b)
        with lock: results.append(len(toks))
    threads = [threading.Thread(target=one, args=(b,)) for b in bodies]
    t = time.perf_counter()
    for th in threads: th.start()
    for th in threads: th.join()
    dt = time.perf_counter() - t
    return sum(results), dt


def start_server(a):
    port = free_port()
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), FLAMINGO_LIMITS_MAX_QUEUE="1024")
    proc = subprocess.Popen([a.server_bin, "--host", "127.0.0.1", "--port", str(port),
                             "--model-dir", a.model_dir, "--dtype", a.dtype], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2); c.request("GET", "/ready")
            if c.getresponse().status == 200: break
        except OSError: pass
        time.sleep(0.2)
    return port, proc


def load_cases(model_dir):
    img = lambda n: open(os.path.join(model_dir, "images", n + ".png"), "rb").read()
    return {"caption_1img": (CAPTION, [img("gradient")]),
            "two_shot_3img": (TWO_SHOT, [img("gradient"), img("checker"), img("stripes")])}


SETTLE_S = 0.5


def interleaved(a):
    tokens = 20
    ref = subprocess.Popen([a.ref_python, os.path.join(ROOT, "scripts/bench_reference.py"), "--model-dir", a.model_dir,
                            "--threads", str(a.threads), "--batch", str(a.concurrency), "--serve"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(case):
        ref.stdin.write(case + "\n"); ref.stdin.flush()
        while True:
            line = ref.stdout.readline()
            if not line:
                raise RuntimeError("the reference process ended")
            if line.startswith("{"):
                # PyTorch's OpenMP threads keep spinning for a while after a call; let them go idle
                # before our side runs (and ours before the reference's next call).
                time.sleep(SETTLE_S)
                return json.loads(line)

    def settled(fn, *args):
        out = fn(*args)
        time.sleep(SETTLE_S)
        return out

    while True:  # skip the reference's loading chatter up to its ready line
        line = ref.stdout.readline()
        if not line:
            raise RuntimeError("the reference process ended before it was ready")
        if line.startswith("{") and json.loads(line).get("ready"):
            break
    port, proc = start_server(a)
    try:
        cases = load_cases(a.model_dir)
        salt = 0
        rows = []
        for name, (prompt, images) in cases.items():
            salt += 1
            post(port, body(prompt, [fresh(i, salt) for i in images], tokens))  # warm-up
            theirs, ours, ratios, same = [], [], [], True
            for r in range(a.repeats):
                salt += 1
                b = body(prompt, [fresh(i, salt) for i in images], tokens)
                # Alternate who goes first, so a slow spell does not always land on one side.
                if r % 2 == 0:
                    t_ref = ask(name); dt, toks = settled(post, port, b)
                else:
                    dt, toks = settled(post, port, b); t_ref = ask(name)
                theirs.append(t_ref["seconds"]); ours.append(dt); ratios.append(dt / t_ref["seconds"])
                same = same and toks == t_ref["tokens"]
            rows.append((name, statistics.median(theirs), statistics.median(ours), statistics.median(ratios), same,
                         ratios))
        grad = load_cases(a.model_dir)["caption_1img"][1][0]
        ref_tput, our_tput, tput_ratios = [], [], []
        for r in range(a.rounds):
            out = ask("batched")
            ref_tput.append(out["generated"] / out["seconds"])
            distinct = [body(CAPTION, [fresh(grad, 1000 * (r + 1) + i)], tokens) for i in range(a.concurrency)]
            n, dt = settled(concurrent, port, distinct)
            our_tput.append(n / dt)
            tput_ratios.append(our_tput[-1] / ref_tput[-1])
        print(f"{'case (medians; ratio = median of per-round ratios)':<52} {'reference':>10} {'ours':>10} {'ours/ref':>9}")
        for name, theirs, ours, ratio, same, ratios in rows:
            print(f"{name + ' latency (ms)':<52} {theirs * 1e3:>10.0f} {ours * 1e3:>10.0f} {ratio:>9.2f}"
                  f"{'' if same else '  (tokens differ!)'}  rounds: {' '.join(f'{x:.2f}' for x in ratios)}")
        print(f"{f'{a.concurrency} concurrent, tokens/s':<52} {statistics.median(ref_tput):>10.1f} "
              f"{statistics.median(our_tput):>10.1f} {statistics.median(tput_ratios):>9.2f}  rounds: "
              f"{' '.join(f'{x:.2f}' for x in tput_ratios)}")
        print(json.dumps({"latency": {r[0]: {"reference_s": r[1], "ours_s": r[2], "ratio": r[3], "same_tokens": r[4],
                                             "round_ratios": r[5]} for r in rows},
                          "throughput": {"reference": ref_tput, "ours_distinct_images": our_tput,
                                         "round_ratios": tput_ratios, "concurrency": a.concurrency,
                                         "dtype": a.dtype, "threads": a.threads}}))
    finally:
        proc.send_signal(signal.SIGTERM); proc.wait(timeout=60)
        ref.stdin.close(); ref.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--ref-python", default=os.environ.get("REF_PYTHON", "/work/venvs/ref/bin/python"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--server-bin", default=os.path.join(ROOT, "target/release/flamingo-server"),
                    help="the server binary to run (e.g. an older build, to compare two builds in one sitting)")
    ap.add_argument("--skip-reference", action="store_true", help="reuse --reference-json instead")
    ap.add_argument("--interleave", action="store_true", help="alternate reference and ours request by request")
    ap.add_argument("--rounds", type=int, default=3, help="throughput rounds with --interleave")
    ap.add_argument("--reference-json")
    a = ap.parse_args()
    tokens = 20

    if a.interleave:
        return interleaved(a)
    if a.skip_reference:
        ref = json.load(open(a.reference_json))
    else:
        out = subprocess.run([a.ref_python, os.path.join(ROOT, "scripts/bench_reference.py"), "--model-dir", a.model_dir,
                              "--threads", str(a.threads), "--repeats", str(a.repeats), "--batch", str(a.concurrency)],
                             capture_output=True, text=True, check=True).stdout
        print("\n".join(l for l in out.splitlines() if l.startswith("reference")))
        ref = json.loads(out.strip().splitlines()[-1])
        if a.reference_json:
            json.dump(ref, open(a.reference_json, "w"))

    port, proc = start_server(a)
    try:
        cases = load_cases(a.model_dir)
        img = lambda n: open(os.path.join(a.model_dir, "images", n + ".png"), "rb").read()
        salt = 0
        rows = []
        for name, (prompt, images) in cases.items():
            salt += 1
            post(port, body(prompt, [fresh(i, salt) for i in images], tokens))  # warm-up
            times, toks = [], None
            for _ in range(a.repeats):
                salt += 1
                dt, toks = post(port, body(prompt, [fresh(i, salt) for i in images], tokens))
                times.append(dt)
            ours, theirs = statistics.median(times), ref[name]["median_s"]
            same = toks == ref[name]["tokens"]
            rows.append((name, theirs, ours, same))
            print(f"ours {name}: median {ours * 1e3:.0f} ms over {a.repeats}, tokens {'==' if same else '!='} reference")

        grad = img("gradient")
        distinct = [body(CAPTION, [fresh(grad, 1000 + i)], tokens) for i in range(a.concurrency)]
        n, dt = concurrent(port, distinct)
        tput = n / dt
        shared = body(CAPTION, [grad], tokens)
        post(port, shared)  # the shared image's features now sit in the cache
        n2, dt2 = concurrent(port, [shared] * a.concurrency)
        tput_cached = n2 / dt2
        ref_tput = ref["batched"]["tokens_per_s"]
        print()
        print(f"{'case':<34} {'reference':>10} {'ours':>10} {'ours/ref':>9}")
        for name, theirs, ours, same in rows:
            print(f"{name + ' latency (ms)':<34} {theirs * 1e3:>10.0f} {ours * 1e3:>10.0f} {ours / theirs:>9.2f}"
                  f"{'' if same else '  (tokens differ!)'}")
        print(f"{f'{a.concurrency} concurrent, tokens/s':<34} {ref_tput:>10.1f} {tput:>10.1f} {tput / ref_tput:>9.2f}")
        print(f"{f'{a.concurrency} concurrent, one image (cache)':<34} {ref_tput:>10.1f} {tput_cached:>10.1f} {tput_cached / ref_tput:>9.2f}")
        print(json.dumps({"latency": {r[0]: {"reference_s": r[1], "ours_s": r[2], "ratio": r[2] / r[1], "same_tokens": r[3]}
                                      for r in rows},
                          "throughput": {"reference": ref_tput, "ours_distinct_images": tput, "ours_shared_image": tput_cached,
                                         "concurrency": a.concurrency, "dtype": a.dtype, "threads": a.threads}}))
    finally:
        proc.send_signal(signal.SIGTERM); proc.wait(timeout=60)


if __name__ == "__main__":
    main()
