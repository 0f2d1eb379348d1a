#!/usr/bin/env python3
"""Helper of scripts/multi-replica-run.sh (Python stdlib only).

  images DIR N            write N distinct small PNGs (seeded patterns) into DIR
  load ...                few-shot traffic through the balancer, with or without the affinity
                          header; samples the replicas' scheduler gauges; writes a JSON report
  cache URL...            image-cache hits/misses summed over replicas (JSON on stdout)
  summary ...             judge the phase reports, print the table, write summary.md

The affinity key is computed here exactly as documented (docs/kubernetes.md and the server's
affinity.rs): hex(SHA-256(sha256(img_1) || ... || sha256(img_n)))[:16] over the few-shot example
images in order (all images but the query).
"""

import argparse
import base64
import hashlib
import http.client
import json
import math
import os
import random
import struct
import sys
import threading
import time
import urllib.parse
import zlib

# Statuses the API documents (README "How answers count"); 429/503 must carry Retry-After.
DOCUMENTED = {200, 400, 401, 413, 422, 429, 503, 504}
SHED = {429, 503}


def png(width, height, seed):
    """A small RGB PNG with a seeded pattern (distinct bytes per seed)."""
    rng = random.Random(seed)
    a, b, c = (rng.randrange(1, 9) for _ in range(3))
    base = [rng.randrange(256) for _ in range(3)]
    rows = []
    for y in range(height):
        row = bytearray([0])
        for x in range(width):
            row += bytes(
                ((base[0] + a * x) % 256, (base[1] + b * y) % 256, (base[2] + c * (x ^ y)) % 256)
            )
        rows.append(bytes(row))

    def chunk(tag, data):
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"".join(rows), 6))
        + chunk(b"IEND", b"")
    )


def cmd_images(args):
    os.makedirs(args.dir, exist_ok=True)
    for i in range(args.n):
        with open(os.path.join(args.dir, f"img{i:03d}.png"), "wb") as f:
            f.write(png(48, 48, 1000 + i))


def affinity_key(image_bytes_list):
    digest = hashlib.sha256()
    for b in image_bytes_list:
        digest.update(hashlib.sha256(b).digest())
    return digest.hexdigest()[:16]


def scrape(url, timeout=2.0):
    """Gauges and counters of one replica's /metrics, {name: value} (labels dropped, summed)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        text = resp.read().decode()
        if resp.status != 200:
            return None
    finally:
        conn.close()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            pass
    return out


def cmd_cache(args):
    hits = misses = 0.0
    per = []
    for url in args.urls:
        m = scrape(url) or {}
        h = m.get("flamingo_image_cache_hits_total", 0.0)
        x = m.get("flamingo_image_cache_misses_total", 0.0)
        per.append({"url": url, "hits": h, "misses": x})
        hits += h
        misses += x
    json.dump({"hits": hits, "misses": misses, "replicas": per}, sys.stdout)


class Load:
    def __init__(self, args):
        self.args = args
        u = urllib.parse.urlsplit(args.url)
        self.host, self.port = u.hostname, u.port
        files = sorted(f for f in os.listdir(args.images_dir) if f.endswith(".png"))
        need = args.sets * args.shots + args.queries
        if len(files) < need:
            sys.exit(f"need {need} images in {args.images_dir}, found {len(files)}")
        blobs = [open(os.path.join(args.images_dir, f), "rb").read() for f in files[:need]]
        self.b64 = [base64.b64encode(b).decode() for b in blobs]
        # Example sets are disjoint; queries come from their own pool.
        self.sets = [list(range(s * args.shots, (s + 1) * args.shots)) for s in range(args.sets)]
        self.queries = list(range(args.sets * args.shots, need))
        self.keys = [affinity_key([blobs[i] for i in s]) for s in self.sets]
        self.lock = threading.Lock()
        self.results = []
        self.samples = []
        self.stop = threading.Event()
        self.step = 0
        self.counter = 0

    def body(self, rng):
        s = rng.randrange(len(self.sets))
        q = rng.choice(self.queries)
        examples = [{"image": self.b64[i], "text": f"An example {i}."} for i in self.sets[s]]
        doc = {
            "task": "caption",
            "examples": examples,
            "query": {"image": self.b64[q]},
            "parameters": {"max_new_tokens": self.args.max_new_tokens, "seed": 1},
        }
        return s, json.dumps(doc).encode()

    def one(self, conn, rng, worker):
        with self.lock:
            self.counter += 1
            idx = self.counter
            step = self.step
        s, body = self.body(rng)
        rid = f"mr-{self.args.label}-{idx}"
        headers = {"content-type": "application/json", "x-request-id": rid}
        if self.args.affinity:
            headers["x-flamingo-affinity"] = self.keys[s]
        rec = {"i": idx, "set": s, "step": step, "t": time.monotonic() - self.t0, "attempts": 0}
        started = time.monotonic()
        for attempt in range(1 + self.args.retries):
            rec["attempts"] = attempt + 1
            try:
                conn.request("POST", "/generate", body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
                rec.setdefault("first_status", status)
                rec["status"] = status
                rec.pop("lost", None)
                if status not in DOCUMENTED:
                    rec["failure"] = f"undocumented status {status}"
                elif status in SHED and not resp.getheader("retry-after"):
                    rec["failure"] = f"{status} without Retry-After"
                elif resp.getheader("x-flamingo-affinity") not in (None, "", self.keys[s]):
                    # Once the server returns the key, it must be the documented formula's.
                    rec["failure"] = (
                        f"x-flamingo-affinity {resp.getheader('x-flamingo-affinity')} != {self.keys[s]}"
                    )
                elif resp.getheader("x-request-id") != rid:
                    rec["failure"] = "x-request-id missing or changed"
                elif status == 200:
                    try:
                        ok = "generated_text" in json.loads(data)
                    except ValueError:
                        ok = False
                    if not ok:
                        rec["failure"] = "200 without generated_text"
                else:
                    try:
                        json.loads(data)["error"]
                    except (ValueError, KeyError, TypeError):
                        rec["failure"] = f"{status} body is not the error JSON"
                if resp.getheader("x-flamingo-affinity") == self.keys[s]:
                    rec["key_echoed"] = True
                if status in SHED and attempt < self.args.retries:
                    try:
                        wait = float(resp.getheader("retry-after") or "1")
                    except ValueError:
                        wait = 1.0
                    time.sleep(min(wait, 2.0) * (0.5 + rng.random()))
                    continue
                break
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                conn = self.connect()
                rec["lost"] = type(e).__name__
                rec.setdefault("first_status", "lost")
                break
        rec["ms"] = (time.monotonic() - started) * 1000.0
        with self.lock:
            self.results.append(rec)
        return conn

    def connect(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=self.args.timeout)

    def worker(self, w, active):
        rng = random.Random(self.args.seed * 1000 + w)
        conn = self.connect()
        while not self.stop.is_set():
            if w >= active[0]:
                time.sleep(0.02)
                continue
            conn = self.one(conn, rng, w)
        conn.close()

    def sampler(self):
        while not self.stop.is_set():
            t = time.monotonic() - self.t0
            for r, url in enumerate(self.args.replica):
                try:
                    m = scrape(url, timeout=1.0)
                except OSError:
                    m = None
                if m is None:
                    continue
                self.samples.append(
                    {
                        "t": round(t, 3),
                        "replica": r,
                        "step": self.step,
                        "waiting": m.get("vllm:num_requests_waiting", 0.0),
                        "running": m.get("vllm:num_requests_running", 0.0),
                        "queue_depth": m.get("flamingo_queue_depth", 0.0),
                        "active": m.get("flamingo_active_sequences", 0.0),
                    }
                )
            self.stop.wait(self.args.sample_every)

    def run(self):
        steps = [tuple(int(x) for x in s.split(":")) for s in self.args.steps.split(",")]
        top = max(c for c, _ in steps)
        active = [0]
        self.t0 = time.monotonic()
        threads = [threading.Thread(target=self.worker, args=(w, active)) for w in range(top)]
        if self.args.replica:
            threads.append(threading.Thread(target=self.sampler))
        for t in threads:
            t.start()
        events = []
        try:
            for i, (conc, secs) in enumerate(steps):
                with self.lock:
                    self.step = i
                active[0] = conc
                end = time.monotonic() + secs
                for ev in self.args.event or []:
                    at, _, cmd = ev.partition(":")
                    at = float(at)
                    now = time.monotonic() - self.t0
                    if now <= at < now + secs:
                        self.stop.wait(max(0.0, at - now))
                        os.system(cmd)
                        events.append({"t": round(time.monotonic() - self.t0, 3), "cmd": cmd})
                self.stop.wait(max(0.0, end - time.monotonic()))
        finally:
            self.stop.set()
            for t in threads:
                t.join(self.args.timeout + 5)
        return {"steps": steps, "events": events, "elapsed_s": time.monotonic() - self.t0}


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, math.ceil(p / 100.0 * len(xs)) - 1))
    return xs[k]


def cmd_load(args):
    load = Load(args)
    meta = load.run()
    res = load.results
    ok = [r for r in res if r.get("status") == 200 and "failure" not in r and "lost" not in r]
    statuses = {}
    first = {}
    for r in res:
        statuses[str(r.get("status", "lost") if "lost" not in r else "lost")] = (
            statuses.get(str(r.get("status", "lost") if "lost" not in r else "lost"), 0) + 1
        )
        first[str(r.get("first_status"))] = first.get(str(r.get("first_status")), 0) + 1
    report = {
        "label": args.label,
        "affinity": args.affinity,
        "requests": len(res),
        "ok": len(ok),
        "lost": sum(1 for r in res if "lost" in r),
        "lost_causes": sorted({r["lost"] for r in res if "lost" in r}),
        "failures": sum(1 for r in res if "failure" in r),
        "failure_causes": sorted({r["failure"] for r in res if "failure" in r})[:5],
        "statuses_final": statuses,
        "statuses_first_attempt": first,
        "retried": sum(1 for r in res if r["attempts"] > 1),
        "affinity_header_matches": sum(1 for r in res if r.get("key_echoed")),
        "throughput_rps": len(ok) / meta["elapsed_s"],
        "p50_ms": pct([r["ms"] for r in ok], 50),
        "p99_ms": pct([r["ms"] for r in ok], 99),
        "elapsed_s": meta["elapsed_s"],
        "steps": meta["steps"],
        "events": meta["events"],
        "samples": load.samples,
        "timeline": [
            {"t": round(r["t"], 2), "status": r.get("status", "lost") if "lost" not in r else "lost"}
            for r in sorted(res, key=lambda r: r["t"])
        ],
        "set_keys": load.keys,
    }
    with open(args.out, "w") as f:
        json.dump(report, f)
    print(
        f"   {args.label}: {len(res)} requests, {len(ok)} ok, {report['lost']} lost, "
        f"{report['failures']} failures, {report['throughput_rps']:.1f} req/s, "
        f"p50 {report['p50_ms']:.0f} ms, p99 {report['p99_ms']:.0f} ms, statuses {statuses}, "
        f"x-flamingo-affinity = client key on {report['affinity_header_matches']}"
    )


def cmd_summary(args):
    def load(name):
        with open(os.path.join(args.dir, name)) as f:
            return json.load(f)

    aff, rr, fo = load("affinity.json"), load("round-robin.json"), load("failover.json")
    cache = {n: load(f"cache-{n}.json") for n in ("affinity", "round-robin")}
    problems = []
    rows = []
    for name, rep in (("affinity (hash consistent)", aff), ("round-robin", rr)):
        c = cache["affinity" if rep is aff else "round-robin"]
        total = c["hits"] + c["misses"]
        rate = c["hits"] / total if total else float("nan")
        rep["hit_rate"] = rate
        rows.append(
            f"| {name} | {rep['requests']} | {c['hits']:.0f} / {total:.0f} | {rate:.1%} | "
            f"{rep['throughput_rps']:.1f} | {rep['p50_ms']:.0f} | {rep['p99_ms']:.0f} | "
            f"{rep['lost']} | {rep['failures']} |"
        )
        if rep["lost"] or rep["failures"]:
            problems.append(f"{name}: {rep['lost']} lost, {rep['failures']} failures {rep['failure_causes']}")
        if rep["ok"] == 0:
            problems.append(f"{name}: no successful request")
    if not (aff["hit_rate"] > rr["hit_rate"]):
        problems.append(
            f"affinity hit rate {aff['hit_rate']:.1%} is not above round-robin {rr['hit_rate']:.1%}"
        )
    # Failover: nothing lost, only documented statuses, and the survivor keeps answering 200
    # after both the kill and the drain.
    last_event = max((e["t"] for e in fo["events"]), default=0.0)
    after = [x for x in fo["timeline"] if x["t"] > last_event + args.settle_s]
    after_ok = sum(1 for x in after if x["status"] == 200)
    if fo["lost"] or fo["failures"]:
        problems.append(
            f"failover: {fo['lost']} lost {fo['lost_causes']}, {fo['failures']} failures {fo['failure_causes']}"
        )
    if len(fo["events"]) != 2:
        problems.append(f"failover: expected 2 events (kill -9, SIGTERM), ran {fo['events']}")
    if after_ok == 0:
        problems.append("failover: no 200 after the kill and the drain (survivor not serving)")
    lines = [
        "| routing | requests | image cache hits / lookups | hit rate | req/s | p50 ms | p99 ms | lost | failures |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"failover (affinity, {fo['requests']} requests): events "
        + ", ".join(f"{e['cmd'].split()[0]} {e['cmd'].split()[1]} at {e['t']:.1f}s" for e in fo["events"])
        + f"; first-attempt statuses {fo['statuses_first_attempt']}; final statuses after "
        f"<= {args.retries} client retry on 429/503 {fo['statuses_final']}; lost {fo['lost']}; "
        f"failures {fo['failures']}; 200s after the last event + {args.settle_s:.0f}s: {after_ok} of {len(after)}",
    ]
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(args.dir, "summary.md"), "w") as f:
        f.write(text + "\n" + ("\nFAIL:\n" + "\n".join(problems) if problems else "\nPASS\n"))
    if problems:
        print("multi-replica run: FAIL", *problems, sep="\n  ", file=sys.stderr)
        sys.exit(1)
    print("multi-replica run: PASS")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("images")
    p.add_argument("dir")
    p.add_argument("n", type=int)
    p = sub.add_parser("cache")
    p.add_argument("urls", nargs="+")
    p = sub.add_parser("load")
    p.add_argument("--url", required=True)
    p.add_argument("--replica", action="append", default=[], help="replica URL to sample /metrics from")
    p.add_argument("--images-dir", required=True)
    p.add_argument("--sets", type=int, default=24)
    p.add_argument("--shots", type=int, default=3)
    p.add_argument("--queries", type=int, default=16)
    p.add_argument("--steps", default="2:5,8:5,16:5", help="concurrency:seconds,...")
    p.add_argument("--affinity", action="store_true")
    p.add_argument("--retries", type=int, default=0, help="client retries on 429/503 (Retry-After)")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--sample-every", type=float, default=0.5)
    p.add_argument("--event", action="append", help="SECONDS:shell command, run once at that time")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--label", default="load")
    p.add_argument("--out", required=True)
    p = sub.add_parser("summary")
    p.add_argument("--dir", required=True)
    p.add_argument("--retries", type=int, default=1)
    p.add_argument("--settle-s", type=float, default=2.0)
    args = ap.parse_args()
    {"images": cmd_images, "cache": cmd_cache, "load": cmd_load, "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    main()
