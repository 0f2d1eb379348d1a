#!/usr/bin/env python3
"""Reproducible attack run against the release flamingo-server (issue 13, "Hardening").

Stdlib only, loopback only (127.0.0.1), bounded: every case has a timeout and the whole run has a
budget (--short: 120 s, full: 6 min). The script starts the server binary itself (the bundled tiny
model), one instance per group of cases that needs special settings (environment overrides
FLAMINGO_<SECTION>_<KEY>), waits for GET /ready, and kills every instance it started at the end,
also on failure or Ctrl-C.

Output: one line per case, `HELD   <name>  <figures>` or `BROKEN <name>  <why>`, then `N/M held`.
Exit status 1 when any case is broken.

    python3 scripts/attack.py            # full run (bigger bodies, more repetitions)
    python3 scripts/attack.py --short    # CI form
    python3 scripts/attack.py --server-bin target/release/flamingo-server --only slow_loris,kv_budget

The filter and worker-death cases set FLAMINGO_TEST_* hooks, which only a binary built with the
`test-hooks` feature has (scripts/test.sh builds target/release/flamingo-server that way:
cargo build --release --workspace --bins --features flamingo-server/test-hooks); a binary built
without it refuses to start with them, and those cases report BROKEN with its message.
"""

import argparse
import base64
import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "tiny-openflamingo"
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")

ARGS = None
SERVERS = []  # every server process this script started (killed at exit)
SERVERS_LOCK = threading.Lock()


class CaseFailure(Exception):
    """A case did not hold; the message says why (with the figures measured so far)."""


def check(cond, why):
    if not cond:
        raise CaseFailure(why)


# ----------------------------------------------------------------------------------------------
# HTTP over raw sockets (so that early 413s, resets and half-sent requests are all observable)
# ----------------------------------------------------------------------------------------------


class Resp:
    def __init__(self, status, headers, body, elapsed, error=None, send_error=None):
        self.status = status
        self.headers = headers
        self.body = body
        self.elapsed = elapsed
        self.error = error
        self.send_error = send_error

    def json(self):
        try:
            return json.loads(self.body.decode("utf-8", "replace"))
        except ValueError:
            return None

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def short(self, n=200):
        if self.status is None:
            return f"no response ({self.error}) after {self.elapsed:.2f}s"
        t = self.text
        return f"{self.status} {t[:n]!r}{'...' if len(t) > n else ''}"


def dechunk(data):
    out = bytearray()
    i = 0
    while i < len(data):
        j = data.find(b"\r\n", i)
        if j < 0:
            break
        size = int(data[i:j].split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        out += data[j + 2 : j + 2 + size]
        i = j + 2 + size + 2
    return bytes(out)


def parse_response(raw):
    """(status, headers, body) of the first final (non-1xx) response in `raw`, or None."""
    while True:
        end = raw.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = raw[:end].decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            return None
        status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        rest = raw[end + 4 :]
        if 100 <= status < 200:
            raw = rest
            continue
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = dechunk(rest)
        elif "content-length" in headers:
            body = rest[: int(headers["content-length"])]
        else:
            body = rest
        return status, headers, body


def build_request(method, path, body=None, headers=None, content_type=None):
    h = {"Host": "127.0.0.1", "Connection": "close"}
    if body is not None and not isinstance(body, (bytes, bytearray)):
        body = json.dumps(body).encode()
        content_type = content_type or "application/json"
    if content_type:
        h["Content-Type"] = content_type
    if body is not None:
        h["Content-Length"] = str(len(body))
    h.update(headers or {})
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
    return head.encode("latin-1"), (bytes(body) if body is not None else b"")


def exchange(port, head, body=b"", timeout=30.0, body_chunks=None):
    """Send `head` + `body` (from a sender thread) while reading; return the parsed response.

    Reads until the server closes the connection (requests say `Connection: close`)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=min(timeout, 10))
    except OSError as e:
        return Resp(None, {}, b"", time.monotonic() - t0, error=f"connect: {e}")
    send_err = []

    def sender():
        try:
            s.sendall(head)
            if body_chunks is not None:
                for c in body_chunks:
                    s.sendall(c)
            elif body:
                mv = memoryview(body)
                for i in range(0, len(body), 1 << 20):
                    s.sendall(mv[i : i + (1 << 20)])
        except OSError as e:
            send_err.append(f"{type(e).__name__}: {e}")

    th = threading.Thread(target=sender, daemon=True)
    th.start()
    raw = bytearray()
    err = None
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                err = f"timeout after {timeout:.1f}s"
                break
            s.settimeout(min(left, 1.0))
            try:
                chunk = s.recv(1 << 16)
            except socket.timeout:
                continue
            if not chunk:
                break
            raw += chunk
    except OSError as e:
        err = f"{type(e).__name__}: {e}"
    finally:
        try:
            s.close()
        except OSError:
            pass
    elapsed = time.monotonic() - t0
    parsed = parse_response(bytes(raw))
    if parsed is None:
        return Resp(None, {}, bytes(raw), elapsed, error=err or "connection closed without a response",
                    send_error=send_err[0] if send_err else None)
    status, headers, rbody = parsed
    return Resp(status, headers, rbody, elapsed, error=err, send_error=send_err[0] if send_err else None)


def request(port, method, path, body=None, headers=None, timeout=30.0, content_type=None):
    head, b = build_request(method, path, body, headers, content_type)
    return exchange(port, head, b, timeout=timeout)


def parallel(fns):
    """Run the callables at once; return their results in order."""
    out = [None] * len(fns)

    def run(i, f):
        try:
            out[i] = f()
        except Exception as e:  # noqa: BLE001 - reported as the result
            out[i] = e

    ths = [threading.Thread(target=run, args=(i, f), daemon=True) for i, f in enumerate(fns)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    return out


# ----------------------------------------------------------------------------------------------
# Server processes
# ----------------------------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name, env=None, ready_timeout=90.0):
        self.name = name
        self.port = free_port()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLAMINGO_")}
        full_env.setdefault("RUST_LOG", "info")
        full_env["NO_COLOR"] = "1"
        full_env.update(env or {})
        self.env = env or {}
        fd, self.log_path = tempfile.mkstemp(prefix=f"attack-{name}-", suffix=".log")
        self.log = os.fdopen(fd, "wb")
        self.proc = subprocess.Popen(
            [ARGS.server_bin, "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=full_env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
        )
        with SERVERS_LOCK:
            SERVERS.append(self)
        self.started = time.monotonic()
        deadline = self.started + ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise CaseFailure(f"server {name} exited with {self.proc.returncode} before /ready: {self.log_tail()}")
            r = request(self.port, "GET", "/ready", timeout=2)
            if r.status == 200:
                break
            if time.monotonic() > deadline:
                raise CaseFailure(f"server {name}: /ready not 200 after {ready_timeout:.0f}s ({r.short()})")
            time.sleep(0.1)
        self.startup_s = time.monotonic() - self.started

    @property
    def pid(self):
        return self.proc.pid

    def log_text(self):
        try:
            self.log.flush()
            return ANSI_RE.sub("", Path(self.log_path).read_text("utf-8", "replace"))
        except OSError:
            return ""

    def log_tail(self, n=3):
        return " | ".join(self.log_text().strip().splitlines()[-n:])

    def get(self, path, timeout=10.0, headers=None):
        return request(self.port, "GET", path, headers=headers, timeout=timeout)

    def post(self, path, body, timeout=30.0, headers=None, content_type=None):
        return request(self.port, "POST", path, body=body, headers=headers, timeout=timeout,
                       content_type=content_type)

    def metric(self, name):
        r = self.get("/metrics")
        if r.status != 200:
            raise CaseFailure(f"GET /metrics: {r.short()}")
        total = 0.0
        for line in r.text.splitlines():
            if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:
            self.log.close()
        except OSError:
            pass


def kill_all_servers():
    with SERVERS_LOCK:
        servers = list(SERVERS)
    for s in servers:
        s.stop()


def proc_status_kb(pid, key):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class Monitor:
    """While a heavy case runs: GET /health every 100 ms (max latency) and the server's RSS
    (sampled VmRSS every 50 ms, and VmHWM after resetting it through /proc/<pid>/clear_refs)."""

    def __init__(self, server, health_timeout=10.0):
        self.s = server
        self.health_timeout = health_timeout
        self.latencies = []
        self.failures = []
        self.first_ok = None
        self.inflight_since = None
        self.peak_kb = 0
        self.stop_ev = threading.Event()

    def __enter__(self):
        pid = self.s.pid
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.base_kb = proc_status_kb(pid, "VmRSS")
        self.peak_kb = self.base_kb
        self.t0 = time.monotonic()
        self.th_h = threading.Thread(target=self._health, daemon=True)
        self.th_m = threading.Thread(target=self._rss, daemon=True)
        self.th_h.start()
        self.th_m.start()
        return self

    def _health(self):
        while not self.stop_ev.is_set():
            t = time.monotonic()
            self.inflight_since = t
            r = request(self.s.port, "GET", "/health", timeout=self.health_timeout)
            self.inflight_since = None
            self.latencies.append(r.elapsed)
            if r.status == 200:
                if self.first_ok is None:
                    self.first_ok = time.monotonic() - self.t0
            else:
                self.failures.append(r.status if r.status is not None else (r.error or "?"))
            self.stop_ev.wait(max(0.0, 0.1 - (time.monotonic() - t)))

    def _rss(self):
        while not self.stop_ev.is_set():
            self.peak_kb = max(self.peak_kb, proc_status_kb(self.s.pid, "VmRSS"))
            self.stop_ev.wait(0.05)

    def __exit__(self, *exc):
        self.stop_ev.set()
        since = self.inflight_since
        if since is not None:  # a /health still unanswered counts with its time so far
            self.latencies.append(time.monotonic() - since)
        self.th_m.join(2)
        self.th_h.join(self.health_timeout + 1)
        if self.hwm_reset:
            self.peak_kb = max(self.peak_kb, proc_status_kb(self.s.pid, "VmHWM"))
        return False

    @property
    def health_max(self):
        return max(self.latencies) if self.latencies else float("nan")

    @property
    def peak_mb(self):
        return self.peak_kb / 1024

    @property
    def growth_mb(self):
        return (self.peak_kb - self.base_kb) / 1024

    def figures(self):
        f = (f"peak RSS {self.peak_mb:.0f} MB (+{self.growth_mb:.0f} MB); /health max "
             f"{self.health_max * 1000:.0f} ms over {len(self.latencies)} polls")
        if self.failures:
            f += f", {len(self.failures)} non-200 ({self.failures[:3]})"
        return f


# ----------------------------------------------------------------------------------------------
# Payloads
# ----------------------------------------------------------------------------------------------


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(w, h):
    """Signature + IHDR claiming w x h RGB, then IEND (no pixel data)."""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + png_chunk(b"IEND", b""))


_IDAT_CACHE = {}
_NONCE = [0]


def big_png(side):
    """A 16-bit grey side x side PNG (a few tens of KB, side*side*2 bytes decoded). Every call
    returns different bytes (a tEXt chunk with a fresh nonce), the same pixels: a cache keyed on
    the payload bytes cannot recognise it, decoding costs the same."""
    if side not in _IDAT_CACHE:
        row = b"\x00" + struct.pack(">H", 40000) * side
        _IDAT_CACHE[side] = png_chunk(b"IDAT", zlib.compress(row * side, 6))
    _NONCE[0] += 1
    nonce = f"attack {os.getpid()} {time.time_ns()} {_NONCE[0]}".encode()
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0))
            + png_chunk(b"tEXt", b"Comment\x00" + nonce) + _IDAT_CACHE[side] + png_chunk(b"IEND", b""))


def b64(data):
    return base64.b64encode(data).decode()


def fixture_image(name):
    return (FIXTURE / "images" / f"{name}.png").read_bytes()


def load_vocab():
    """id -> piece from the fixture's tokenizer.json (model.vocab + added_tokens)."""
    ids = {}
    for p in (FIXTURE / "llama" / "tokenizer.json", FIXTURE / "openflamingo_tokenizer" / "tokenizer.json"):
        if not p.exists():
            continue
        t = json.loads(p.read_text("utf-8"))
        for piece, i in t["model"]["vocab"].items():
            ids.setdefault(i, piece)
        for a in t.get("added_tokens", []):
            ids.setdefault(a["id"], a["content"])
    return ids


def decode_ids(vocab, ids):
    """SentencePiece-style decode: ▁ -> space, <0xNN> byte pieces fused into UTF-8."""
    out = bytearray()
    for i in ids:
        piece = vocab.get(i, "")
        m = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)
        if m:
            out.append(int(m.group(1), 16))
        else:
            out += piece.replace("\u2581", " ").encode()
    return out.decode("utf-8", "replace")


def sse_events(body):
    events = []
    for line in body.decode("utf-8", "replace").splitlines():
        if line.startswith("data:"):
            data = line[5:].strip()
            try:
                events.append(json.loads(data))
            except ValueError:
                events.append({"_raw": data})
    return events


def err_of(r):
    j = r.json()
    if isinstance(j, dict):
        e = j.get("error")
        if isinstance(e, dict):
            return e
        return {"message": e, "type": j.get("error_type")}
    return {}


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------

MAIN = {}
MONITORS = []  # monitors entered by hand (stopped by the runner whatever happens)


def main_server():
    if "s" not in MAIN or MAIN["s"].proc.poll() is not None:
        MAIN["s"] = Server("main")
    return MAIN["s"]


def ok_4xx(r, allowed=(413, 422)):
    return r.status in allowed


def case_markdown_bang():
    s = main_server()
    size = (512 if ARGS.short else 1024) * 1024
    n = (size - len('{"inputs": ""}')) // 2
    body = json.dumps({"inputs": "![" * n}).encode()
    with Monitor(s) as m:
        r1 = s.post("/generate", body, timeout=60, content_type="application/json")
        rs = parallel([lambda: s.post("/generate", body, timeout=60, content_type="application/json")] * 2)
    rs = [r for r in rs if isinstance(r, Resp)]
    figs = (f"{len(body) // 1024} KB body: {r1.status} in {r1.elapsed:.2f}s; 2 parallel: "
            f"{[r.status for r in rs]} in {max((r.elapsed for r in rs), default=0):.2f}s; {m.figures()}")
    check(ok_4xx(r1) and r1.elapsed < 5, f"single: {r1.short()} in {r1.elapsed:.2f}s (want 413/422 < 5 s); {figs}")
    check(len(rs) == 2 and all(ok_4xx(r) and r.elapsed < 5 for r in rs), f"parallel: {[r.short() for r in rs]}; {figs}")
    check(m.health_max < 1.0, f"/health stalled; {figs}")
    return figs


def case_huge_prompt():
    s = main_server()
    body = json.dumps({"inputs": "a " * 12_000_000}).encode()
    with Monitor(s) as m:
        singles = [] if ARGS.short else [s.post("/generate", body, timeout=60, content_type="application/json")]
        rs = parallel([lambda: s.post("/generate", body, timeout=60, content_type="application/json")] * 3)
    rs = singles + [r for r in rs if isinstance(r, Resp)]
    figs = (f"{len(body) / 1e6:.0f} MB body: {'single ' + str(singles[0].status) + f' in {singles[0].elapsed:.2f}s, ' if singles else ''}"
            f"3 parallel {[r.status for r in rs[len(singles):]]} in {max(r.elapsed for r in rs[len(singles):]):.2f}s; {m.figures()}")
    check(len(rs) == len(singles) + 3, f"a request raised; {figs}")
    bad = [r.short() for r in rs if not (r.status == 422 and r.elapsed < 10)]
    check(not bad, f"want 422 within 10 s: {bad}; {figs}")
    check(m.growth_mb < 1024, f"RSS grew by {m.growth_mb:.0f} MB (want < 1 GB); {figs}")
    return figs


def image_request(images, max_new_tokens=1):
    return {"inputs": "<image>" * len(images) + "Output:", "images": [b64(i) for i in images],
            "parameters": {"max_new_tokens": max_new_tokens}}


def png_side():
    """Side of the big PNGs: 6300 (the issue's 0.87 s / 460 MB image) in the full run."""
    return 2000 if ARGS.short else 6300


def case_png_bomb_repeat():
    s = main_server()
    side = png_side()
    png = big_png(side)
    body = json.dumps(image_request([png] * 16)).encode()
    with Monitor(s) as m:
        d0 = s.metric("flamingo_images_decoded_total")
        r1 = s.post("/generate", body, timeout=120, content_type="application/json")
        d1 = s.metric("flamingo_images_decoded_total")
        r2 = s.post("/generate", body, timeout=120, content_type="application/json")
        d2 = s.metric("flamingo_images_decoded_total")
    figs = (f"16 x {side}x{side} 16-bit PNG ({len(png) // 1024} KB each): first {r1.status} in {r1.elapsed:.2f}s "
            f"(+{d1 - d0:.0f} decoded), second {r2.status} in {r2.elapsed:.2f}s (+{d2 - d1:.0f} decoded); {m.figures()}")
    check(r1.status == 200 and r2.status == 200, f"{r1.short()} / {r2.short()}; {figs}")
    check(d1 - d0 == 1, f"first request decoded {d1 - d0:.0f} images (want exactly 1); {figs}")
    check(d2 - d1 == 0, f"second request decoded {d2 - d1:.0f} images (want 0: cache before decoding); {figs}")
    return figs


def case_concurrent_decodes():
    s = main_server()
    side = png_side()
    bodies = [json.dumps(image_request([big_png(side)])).encode() for _ in range(8)]
    t0 = time.monotonic()
    with Monitor(s) as m:
        rs = parallel([lambda b=b: s.post("/generate", b, timeout=120, content_type="application/json") for b in bodies])
    wall = time.monotonic() - t0
    statuses = [r.status if isinstance(r, Resp) else repr(r) for r in rs]
    figs = f"8 x {side}x{side} PNGs: {statuses} in {wall:.2f}s; {m.figures()}"
    for r in rs:
        check(isinstance(r, Resp), f"raised {r!r}; {figs}")
        check(r.status == 200 or (r.status in (429, 503) and "retry-after" in r.headers), f"{r.short()}; {figs}")
    check(m.health_max < 1.0, f"/health stalled; {figs}")
    return figs


def case_client_gone_cancels():
    s = main_server()
    side = 4000 if ARGS.short else 6300  # big enough that 16 decodes take well over 0.2 s
    body = json.dumps(image_request([big_png(side) for _ in range(16)])).encode()
    head, _ = build_request("POST", "/generate", body, content_type="application/json")
    m = Monitor(s).__enter__()
    MONITORS.append(m)
    before = s.metric("flamingo_images_decoded_total")
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    sock.sendall(head + body)
    time.sleep(0.2)
    sock.close()
    t_close = time.monotonic()
    counts = []
    last_change = time.monotonic()
    prev = None
    while time.monotonic() - t_close < 30:
        c = s.metric("flamingo_images_decoded_total") - before
        counts.append(c)
        if c != prev:
            prev, last_change = c, time.monotonic()
        if time.monotonic() - last_change > 2.0:
            break
        time.sleep(0.2)
    m.__exit__(None, None, None)
    final = counts[-1]
    settled = last_change - t_close
    figs = f"16 x {side}x{side} PNGs, socket closed at 0.2 s: {final:.0f}/16 decoded, count settled {settled:.1f}s after close; {m.figures()}"
    check(time.monotonic() - last_change > 2.0, f"count still growing after 30 s; {figs}")
    check(final <= 8, f"decoding went on after the client left ({final:.0f} of 16, want well before 16); {figs}")
    return figs


def case_slow_loris():
    s = Server("loris", {"FLAMINGO_SERVER_HEADER_READ_TIMEOUT_S": "2", "FLAMINGO_SERVER_MAX_CONNECTIONS": "64"})
    n = 200
    socks = []
    state = {}  # sock -> "open" | "closed" | "reset"
    got = {}
    t0 = time.monotonic()
    if True:
        for _ in range(n):
            try:
                c = socket.create_connection(("127.0.0.1", s.port), timeout=3)
                c.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\n")
                c.setblocking(False)
                socks.append(c)
                state[c] = "open"
                got[c] = b""
            except OSError:
                pass  # refused at connect: counts as not held
        connected = len(socks)
        t_open = time.monotonic() - t0
        m = Monitor(s, health_timeout=8.0).__enter__()  # /health from now on, with every slot taken
        MONITORS.append(m)

        open_at = {}
        next_byte = t0 + 1.0
        while time.monotonic() - t0 < 5.0:
            now = time.monotonic() - t0
            if now >= 1.0 and 1 not in open_at:
                open_at[1] = sum(1 for c in socks if state[c] == "open")
            live = [c for c in socks if state[c] == "open"]
            if not live:
                break
            if time.monotonic() >= next_byte:
                next_byte += 1.0
                for c in live:
                    try:
                        c.send(b"X")
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        state[c] = "reset"
            live = [c for c in socks if state[c] == "open"]
            r, _, _ = select.select(live, [], [], 0.05) if live else ([], [], [])
            for c in r:
                try:
                    d = c.recv(4096)
                    if d:
                        got[c] += d
                    else:
                        state[c] = "closed"
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    state[c] = "reset"
        if 1 not in open_at:
            open_at[1] = sum(1 for c in socks if state[c] == "open")
        open_at[5] = sum(1 for c in socks if state[c] == "open")
        t_all = time.monotonic() - t0
        # give /health a moment past the header timeout if it has not answered yet
        while m.first_ok is None and time.monotonic() - t0 < 6.0:
            time.sleep(0.1)
        m.__exit__(None, None, None)
    refused503 = sum(1 for c in socks if got[c].startswith(b"HTTP/1.1 503"))
    resets = sum(1 for c in socks if state[c] == "reset")
    answered = sum(1 for c in socks if got[c] and not got[c].startswith(b"HTTP/1.1 503"))
    for c in socks:
        c.close()
    figs = (f"{connected}/{n} connected in {t_open:.2f}s; open at 1 s: {open_at[1]}, at 5 s: {open_at[5]} (loop ended {t_all:.1f}s); "
            f"{refused503} refused with 503, {answered} got another response, {resets} reset; /health (polled from when all were open) first 200 at "
            f"{'never' if m.first_ok is None else f'{m.first_ok:.2f}s'}, max latency {m.health_max * 1000:.0f} ms, "
            f"{len(m.failures)} non-200 ({sorted(set(map(str, m.failures)))[:3]})")
    check(open_at[5] == 0, f"{open_at[5]} slow connections still open after 5 s; {figs}")
    check(m.first_ok is not None and m.first_ok < 3.5, f"/health did not answer 200 by the header timeout (+1.5 s); {figs}")
    return figs


def case_sigterm_with_half_sent():
    s = Server("drain", {"FLAMINGO_SERVER_DRAIN_TIMEOUT_S": "30"})
    socks = []
    for _ in range(5):
        c = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        c.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n" + b'{"inputs":')
        socks.append(c)
    time.sleep(0.5)
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    try:
        rc = s.proc.wait(timeout=8)
    except subprocess.TimeoutExpired:
        rc = None
    took = time.monotonic() - t0
    answers = []
    for c in socks:
        try:
            c.settimeout(0.2)
            answers.append((c.recv(64) or b"<closed>")[:15].decode("latin-1"))
        except OSError as e:
            answers.append(type(e).__name__)
        c.close()
    figs = (f"5 half-sent requests, drain_timeout_s 30: exit {'rc ' + str(rc) if rc is not None else 'NOT within 8 s'} "
            f"{took:.2f}s after SIGTERM; sockets saw {sorted(set(answers))}")
    check(rc is not None and took < 5.0, figs)
    return figs


def case_kv_budget():
    main = main_server()
    m = re.search(r"admission budgets.*", main.log_text())
    check(m is not None, f"no 'admission budgets' line in the main server's log: {main.log_tail()}")
    line = m.group(0)
    per_pos = int(re.search(r"kv_bytes_per_position=(\d+)", line).group(1))
    budget = per_pos * 60  # 60 positions of one row: "hi"+5 fits, "hi"+100 and 8 beams x 43 do not
    s = Server("kv", {"FLAMINGO_LIMITS_MAX_KV_BYTES": str(budget)})
    big = s.post("/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 100}})
    small = s.post("/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 5}})
    beams = s.post("/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 40, "num_beams": 8}})
    big_v1 = s.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100})
    figs = (f"kv_bytes_per_position={per_pos}, max_kv_bytes={budget} (60 positions): max_new_tokens 100 -> {big.status}, "
            f"5 -> {small.status}, 8 beams x 40 -> {beams.status}, /v1 max_tokens 100 -> {big_v1.status} "
            f"param={err_of(big_v1).get('param')!r}")
    fails = []
    if not (big.status == 422 and "max_new_tokens" in big.text):
        fails.append(f"max_new_tokens 100: want 422 naming max_new_tokens, got {big.short(300)}")
    if small.status != 200:
        fails.append(f"max_new_tokens 5: want 200, got {small.short()}")
    if not (beams.status == 422 and "num_beams" in beams.text):
        fails.append(f"num_beams 8 x 40: want 422 naming num_beams, got {beams.short(300)}")
    if not (big_v1.status == 422 and err_of(big_v1).get("param") == "max_tokens"):
        fails.append(f"/v1 max_tokens 100: want 422 param max_tokens, got {big_v1.short(300)}")
    check(not fails, f"{'; '.join(fails)}; {figs}")
    return figs


def case_filter_ids_leak():
    s = Server("filter", {"FLAMINGO_TEST_SCRIPTED_OUTPUT": "a fucking great bird "})
    vocab = load_vocab()
    leaks = []
    seen = []

    def scan(where, text):
        if text is not None and "fuck" in str(text).lower():
            leaks.append(f"{where}: {str(text)[:80]!r}")

    for stop in (None, ["fucking"]):
        params = {"max_new_tokens": 30, "details": True}
        if stop:
            params["stop"] = stop
        tag = "stop" if stop else "plain"
        r = s.post("/generate", {"inputs": "Hi", "parameters": params})
        check(r.status == 200, f"/generate {tag}: {r.short()}")
        j = r.json()
        det = j.get("details") or {}
        toks = det.get("tokens") or []
        scan(f"/generate {tag} generated_text", j.get("generated_text"))
        for t in toks:
            scan(f"/generate {tag} token text", t.get("text"))
        ids = [t.get("id") for t in toks]
        decoded = decode_ids(vocab, ids)
        scan(f"/generate {tag} decoded ids {ids}", decoded)
        fr = det.get("finish_reason")
        seen.append(f"/generate {tag}: {j.get('generated_text')!r} {fr}")
        if stop and fr == "stop_sequence":
            leaks.append(f"/generate stop ['fucking'] matched on hidden text (finish_reason stop_sequence)")
        rs = s.post("/generate_stream", {"inputs": "Hi", "parameters": params})
        check(rs.status == 200, f"/generate_stream {tag}: {rs.short()}")
        evs = sse_events(rs.body)
        sids = []
        final = {}
        for e in evs:
            tok = e.get("token") or {}
            if tok:
                sids.append(tok.get("id"))
                scan(f"stream {tag} token text", tok.get("text"))
            if e.get("generated_text") is not None:
                final = e
            scan(f"stream {tag} event", json.dumps(e))
        sdec = decode_ids(vocab, sids)
        scan(f"stream {tag} decoded ids {sids}", sdec)
        sfr = (final.get("details") or {}).get("finish_reason")
        seen.append(f"stream {tag}: {final.get('generated_text')!r} {sfr}")
        if stop and sfr == "stop_sequence":
            leaks.append(f"stream stop ['fucking'] matched on hidden text (finish_reason stop_sequence)")
    figs = "; ".join(seen)
    check(not leaks, f"leaks: {leaks}; {figs}")
    return figs


def case_worker_death():
    s = Server("panic", {"FLAMINGO_TEST_PANIC_AT_STEP": "1"})
    r = s.post("/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 3}}, timeout=30)
    health = None
    t0 = time.monotonic()
    while time.monotonic() - t0 < 5:
        health = s.get("/health", timeout=3)
        if health.status != 200:
            break
        time.sleep(0.1)
    info = s.get("/info", timeout=3)
    ij = info.json() or {}
    exited = s.proc.poll()
    figs = (f"/generate {r.status}; /health {health.status if health.status else health.error} "
            f"({time.monotonic() - t0:.1f}s); /info {info.status} queued={ij.get('queued')!r} "
            f"active={ij.get('active_sequences')!r}{'; process exited ' + str(exited) if exited is not None else ''}")
    check(r.status == 503, f"/generate: {r.short()}; {figs}")
    check(health.status == 503, f"/health should fail after the worker died; {figs}")
    check(info.status == 200 and ij.get("queued") == 0, f"/info: {info.short()}; {figs}")
    return figs


def case_prestop():
    s = Server("prestop", {"FLAMINGO_SERVER_PRESTOP_S": "3"})
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    ready, gens = [], []
    while time.monotonic() - t0 < 2.0:
        ready.append(s.get("/ready", timeout=2).status)
        gens.append(s.post("/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 2}}, timeout=5).status)
        time.sleep(0.1)
    try:
        rc = s.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        rc = None
    took = time.monotonic() - t0
    figs = (f"during 2 s after SIGTERM: /ready {sorted(set(ready))} x{len(ready)}, /generate {sorted(set(gens))} "
            f"x{len(gens)}; exit {'rc ' + str(rc) if rc is not None else 'NOT within 15 s'} at {took:.1f}s")
    check(ready and all(x == 503 for x in ready), f"/ready not 503 throughout; {figs}")
    check(gens and all(x == 200 for x in gens), f"/generate not served throughout; {figs}")
    check(rc is not None, figs)
    return figs


def case_oversized_content_length():
    s = main_server()
    # A: Expect: 100-continue with a 64 MB Content-Length and no body.
    t0 = time.monotonic()
    c = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    c.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 67108864\r\nExpect: 100-continue\r\n\r\n")
    raw = b""
    c.settimeout(0.2)
    while time.monotonic() - t0 < 2.0 and b"\r\n" not in raw:
        try:
            d = c.recv(4096)
            if not d:
                break
            raw += d
        except socket.timeout:
            continue
        except OSError:
            break
    c.close()
    first_a = raw.split(b"\r\n", 1)[0].decode("latin-1")
    ta = time.monotonic() - t0
    # B: no Expect, 64 MB announced, 1 MB of body sent, then read.
    head = (b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 67108864\r\nConnection: close\r\n\r\n")
    rb = exchange(s.port, head, body_chunks=[b"a" * 65536] * 16, timeout=5)
    figs = (f"Expect: 100-continue -> {first_a!r} in {ta:.2f}s; 1 MB of a 64 MB body -> "
            f"{rb.status if rb.status else rb.error} in {rb.elapsed:.2f}s (sender: {rb.send_error or 'all 1 MB sent'})")
    check(first_a.startswith("HTTP/1.1 413") and ta < 2.0, f"want 413 (not 100 Continue) within 2 s; {figs}")
    check(rb.status == 413, f"want a 413 seen; {figs}")
    health = s.get("/health")
    check(health.status == 200, f"/health after: {health.short()}; {figs}")
    return figs


def case_request_id():
    s = main_server()
    out = []
    for sent, path in (("a" * 300, "/health"), ("a b", "/health"), ("a" * 300, "/nope"),
                       ("a b", "/info")):
        r = s.get(path, headers={"x-request-id": sent})
        got = r.headers.get("x-request-id")
        out.append(f"{path} {sent[:8]!r}{'...' if len(sent) > 8 else ''} -> {got[:40] if got else got!r}")
        check(got is not None and REQUEST_ID_RE.match(got) and got != sent, f"bad id {sent[:20]!r} on {path}: got {got!r}")
    good = "attack-req_1.OK"
    r = s.get("/health", headers={"x-request-id": good})
    out.append(f"valid {good!r} -> {r.headers.get('x-request-id')!r}")
    check(r.headers.get("x-request-id") == good, f"valid id not echoed: {out}")
    r = s.post("/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 0}}, headers={"x-request-id": "a b"})
    got = r.headers.get("x-request-id")
    check(got is not None and REQUEST_ID_RE.match(got), f"error response id {got!r}")
    return "; ".join(out)


def case_echo_cap():
    s = main_server()
    r = s.post("/v1/chat/completions", {"messages": [{"role": "x" * 1_000_000, "content": "hi"}]}, timeout=30)
    figs = f"1 MB role -> {r.status}, {len(r.body)} byte body in {r.elapsed:.2f}s"
    check(r.status is not None and 400 <= r.status < 500, f"{r.short()}; {figs}")
    check(len(r.body) < 4096, figs)
    return figs


def case_openai_names():
    s = main_server()
    r = s.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000})
    e = err_of(r)
    figs = f"max_tokens 100000 -> {r.status} param={e.get('param')!r} message={str(e.get('message'))[:80]!r}"
    check(r.status == 422 and e.get("param") == "max_tokens", figs)
    check("max_new_tokens" not in str(e.get("message")), f"message names the TGI field; {figs}")
    a = Server("auth", {"FLAMINGO_SERVER_API_KEYS": "k1"})
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    r1 = a.post("/v1/chat/completions", body)
    r2 = a.get("/v1/models")
    r3 = a.post("/v1/chat/completions", body, headers={"Authorization": "Bearer k1"})
    figs += (f"; keys on: no key -> {r1.status} WWW-Authenticate={r1.headers.get('www-authenticate')!r}, "
             f"GET /v1/models -> {r2.status} ({r2.headers.get('www-authenticate')!r}), right key -> {r3.status}")
    for r in (r1, r2):
        check(r.status == 401 and r.headers.get("www-authenticate"), figs)
    check(r3.status == 200, figs)
    return figs


def case_print_config():
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAMINGO_")}
    env["FLAMINGO_SERVER_API_KEYS"] = "secret123"
    p = subprocess.run([ARGS.server_bin, "--print-config"], cwd=ROOT, env=env, capture_output=True, timeout=30)
    out = p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")
    keys_line = next((l for l in out.splitlines() if l.strip().startswith("api_keys")), "<no api_keys line>")
    figs = f"rc {p.returncode}, {keys_line.strip()[:80]}"
    check(p.returncode == 0, f"{figs}: {out[-300:]!r}")
    check("secret123" not in out, f"the key is printed: {figs}")
    return figs


def case_param_refusals():
    s = main_server()
    out = []
    bad = []
    for name, params in (("best_of 0", {"best_of": 0}), ("typical_p 1.5", {"typical_p": 1.5}),
                         ("repetition_penalty 1e-40", {"repetition_penalty": 1e-40})):
        r = s.post("/generate", {"inputs": "hi", "parameters": dict(params, max_new_tokens=2)})
        out.append(f"{name} -> {r.status}")
        if r.status != 422:
            bad.append(f"{name}: {r.short()}")
    check(not bad, f"{bad}")
    return ", ".join(out)


def case_bad_input_battery():
    s = Server("badinput", {"FLAMINGO_SERVER_MAX_BODY_BYTES": "200000"})
    img = b64(fixture_image("checker"))
    rings = fixture_image("rings")
    truncated = b64(rings[: len(rings) // 2])
    huge = b64(png_header_only(50_000, 50_000))
    tall = b64(png_header_only(1, 9_000))
    zero = b64(png_header_only(0, 0))
    long_prompt = "hello world " * 60
    J = "application/json"
    cases = [
        ("malformed JSON", "/generate", (J, b'{"inputs": '), 400, "invalid_request"),
        ("empty body", "/generate", (J, b""), 400, "invalid_request"),
        ("wrong content type", "/generate", ("text/plain", b'{"inputs": "hi"}'), 400, "invalid_request"),
        ("form content type", "/generate", ("application/x-www-form-urlencoded", b"inputs=hi"), 400, "invalid_request"),
        ("NaN literal", "/generate", (J, b'{"inputs": "hi", "parameters": {"temperature": NaN}}'), 400, "invalid_request"),
        ("wrong field type", "/generate", {"inputs": 5}, 422, "validation"),
        ("negative max_new_tokens", "/generate", {"inputs": "hi", "parameters": {"max_new_tokens": -1}}, 422, "validation"),
        ("no inputs", "/generate", {}, 422, "validation"),
        ("unknown task", "/generate", {"task": "summarize", "query": {"image": img}}, 422, "validation"),
        ("bad base64", "/generate", {"inputs": "<image>x", "images": ["!!!not*base64***"]}, 422, "validation"),
        ("data URL without base64", "/generate", {"inputs": "<image>x", "images": ["data:image/png,abc"]}, 422, "validation"),
        ("not an image", "/generate", {"inputs": "<image>x", "images": [b64(b"this is plain text, not a picture")]}, 422, "validation"),
        ("truncated PNG", "/generate", {"inputs": "<image>x", "images": [truncated]}, 422, "validation"),
        ("PNG claiming 50000x50000", "/generate", {"inputs": "<image>x", "images": [huge]}, 413, "payload_too_large"),
        ("PNG 9000 pixels tall", "/generate", {"inputs": "<image>x", "images": [tall]}, 413, "payload_too_large"),
        ("zero-size PNG", "/generate", {"inputs": "<image>x", "images": [zero]}, 422, "validation"),
        ("http image URL", "/generate", {"inputs": "<image>x", "images": ["https://example.com/a.png"]}, 422, "validation"),
        ("too many images", "/generate", {"inputs": "<image>" * 17, "images": [img] * 17}, 422, "validation"),
        ("more markers than images", "/generate", {"inputs": "<image><image>x", "images": [img]}, 422, "validation"),
        ("more images than markers", "/generate", {"inputs": "<image>x", "images": [img, img]}, 422, "validation"),
        ("images without markers", "/generate", {"inputs": "x", "images": [img]}, 422, "validation"),
        ("max_new_tokens 0", "/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 0}}, 422, "validation"),
        ("max_new_tokens too large", "/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 100000}}, 422, "validation"),
        ("max_new_tokens past the context", "/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 127}}, 422, "validation"),
        ("top_p 2", "/generate", {"inputs": "hi", "parameters": {"top_p": 2}}, 422, "validation"),
        ("top_p 0", "/generate", {"inputs": "hi", "parameters": {"top_p": 0}}, 422, "validation"),
        ("top_k 0", "/generate", {"inputs": "hi", "parameters": {"top_k": 0}}, 422, "validation"),
        ("temperature 0 with do_sample", "/generate", {"inputs": "hi", "parameters": {"temperature": 0, "do_sample": True}}, 422, "validation"),
        ("negative temperature", "/generate", {"inputs": "hi", "parameters": {"temperature": -1}}, 422, "validation"),
        ("repetition_penalty 0", "/generate", {"inputs": "hi", "parameters": {"repetition_penalty": 0}}, 422, "validation"),
        ("num_beams 0", "/generate", {"inputs": "hi", "parameters": {"num_beams": 0}}, 422, "validation"),
        ("num_beams 99", "/generate", {"inputs": "hi", "parameters": {"num_beams": 99}}, 422, "validation"),
        ("beams with sampling", "/generate", {"inputs": "hi", "parameters": {"num_beams": 2, "do_sample": True}}, 422, "validation"),
        ("empty stop sequence", "/generate", {"inputs": "hi", "parameters": {"stop": [""]}}, 422, "validation"),
        ("too many stop sequences", "/generate", {"inputs": "hi", "parameters": {"stop": ["a", "b", "c", "d", "e"]}}, 422, "validation"),
        ("prompt too long for the context", "/generate", {"inputs": long_prompt, "parameters": {"max_new_tokens": 5}}, 422, "validation"),
        ("prompt over max_input_tokens", "/generate", {"inputs": "hello world " * 600}, 422, "validation"),
        ("few-shot and inputs mixed", "/generate", {"inputs": "x", "query": {"image": img}}, 422, "validation"),
        ("body over max_body_bytes", "/generate", {"inputs": "x" * 300_000}, 413, "payload_too_large"),
        ("stream: bad base64", "/generate_stream", {"inputs": "<image>", "images": ["%%%"]}, 422, "validation"),
        ("stream: body over limit", "/generate_stream", {"inputs": "x" * 300_000}, 413, "payload_too_large"),
    ]
    bad = []
    for name, path, body, status, kind in cases:
        if isinstance(body, tuple):
            r = s.post(path, body[1], content_type=body[0])
        else:
            r = s.post(path, body)
        j = r.json() or {}
        if (r.status != status or not isinstance(j.get("error"), str) or j.get("error_type") != kind
                or not r.headers.get("content-type", "").startswith("application/json")):
            bad.append(f"{name}: want {status} {kind}, got {r.short(120)}")
        h = s.get("/health")
        if h.status != 200:
            bad.append(f"server down after {name}: /health {h.short()}")
            break
    n = len(cases)
    # A chunked body (no Content-Length) over the limit.
    big = json.dumps({"inputs": "y" * 300_000}).encode()
    head = (b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    chunks = [b"%x\r\n" % len(big[i:i + 16384]) + big[i:i + 16384] + b"\r\n" for i in range(0, len(big), 16384)] + [b"0\r\n\r\n"]
    r = exchange(s.port, head, body_chunks=chunks, timeout=10)
    n += 1
    if r.status != 413 or (r.json() or {}).get("error_type") != "payload_too_large":
        bad.append(f"chunked body over limit: {r.short(120)}")
    for path in ("/nope", "/v2/generate", "/assets/does-not-exist.js"):
        n += 1
        r = s.get(path)
        if r.status != 404 or (r.json() or {}).get("error_type") != "not_found":
            bad.append(f"GET {path}: {r.short(120)}")
    n += 2
    r = s.get("/generate")
    if r.status != 405 or not isinstance((r.json() or {}).get("error"), str):
        bad.append(f"GET /generate: {r.short(120)}")
    r = request(s.port, "DELETE", "/health")
    if r.status != 405 or not isinstance((r.json() or {}).get("error"), str):
        bad.append(f"DELETE /health: {r.short(120)}")
    n += 1
    r = s.post("/generate", {"inputs": "<image>Output:", "images": [img], "parameters": {"max_new_tokens": 5}})
    if r.status != 200:
        bad.append(f"good request after the battery: {r.short()}")
    if s.get("/ready").status != 200:
        bad.append("/ready not 200 after the battery")
    metrics = s.get("/metrics").text
    fivexx = [l for l in metrics.splitlines() if l.startswith("flamingo_requests_total") and 'status="5' in l
              and 'route="/ready"' not in l]
    if fivexx:
        bad.append(f"5xx recorded: {fivexx[:3]}")
    check(not bad, f"{len(bad)} of {n} checks failed: {bad}")
    return f"{n} bad inputs: documented 4xx JSON each, /health 200 after each, good request 200, no 5xx in metrics"


CASES = [
    ("markdown_bang", case_markdown_bang, 60),
    ("huge_prompt", case_huge_prompt, 90),
    ("png_bomb_repeat", case_png_bomb_repeat, 120),
    ("concurrent_decodes", case_concurrent_decodes, 120),
    ("client_gone_cancels", case_client_gone_cancels, 60),
    ("slow_loris", case_slow_loris, 60),
    ("sigterm_with_half_sent", case_sigterm_with_half_sent, 60),
    ("kv_budget", case_kv_budget, 60),
    ("filter_ids_leak", case_filter_ids_leak, 60),
    ("worker_death", case_worker_death, 60),
    ("prestop", case_prestop, 60),
    ("oversized_content_length", case_oversized_content_length, 30),
    ("request_id", case_request_id, 30),
    ("echo_cap", case_echo_cap, 30),
    ("openai_names", case_openai_names, 60),
    ("print_config", case_print_config, 40),
    ("param_refusals", case_param_refusals, 30),
    ("bad_input_battery", case_bad_input_battery, 90),
]


def run_case(fn, timeout):
    """(held, text). The case runs in a thread so that a hang is reported, not waited for."""
    result = {}

    def target():
        try:
            result["ok"] = fn()
        except CaseFailure as e:
            result["fail"] = str(e)
        except Exception as e:  # noqa: BLE001 - any crash of a case is a broken case
            result["fail"] = f"{type(e).__name__}: {e}"

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        return False, f"case did not finish within {timeout:.0f}s"
    if "fail" in result:
        return False, result["fail"]
    return True, result.get("ok", "")


def main():
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true", help="CI form: smaller bodies/images, fewer repetitions, <= 120 s")
    ap.add_argument("--server-bin", default=str(ROOT / "target" / "release" / "flamingo-server"))
    ap.add_argument("--only", default="", help="comma-separated case names")
    ARGS = ap.parse_args()
    ARGS.server_bin = str(Path(ARGS.server_bin).resolve())
    if not os.access(ARGS.server_bin, os.X_OK):
        print(f"attack.py: no server binary at {ARGS.server_bin} "
              "(cargo build --release -p flamingo-server --features flamingo-server/test-hooks)")
        return 2
    # Run a private copy: a rebuild of target/ during the run must not swap the binary between
    # the server instances of one run.
    src = ARGS.server_bin
    data = Path(src).read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:12]
    mtime = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.stat(src).st_mtime))
    snap_dir = tempfile.mkdtemp(prefix="attack-bin-")
    ARGS.server_bin = os.path.join(snap_dir, "flamingo-server")
    shutil.copy2(src, ARGS.server_bin)
    budget = 120.0 if ARGS.short else 360.0
    only = {x.strip() for x in ARGS.only.split(",") if x.strip()}
    cases = [c for c in CASES if not only or c[0] in only]

    def on_signal(signum, _frame):
        kill_all_servers()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t_start = time.monotonic()
    held = 0
    logs = []
    width = max(len(c[0]) for c in cases)
    print(f"attack.py ({'short' if ARGS.short else 'full'}): {src} (built {mtime}, sha256 {digest}), "
          f"budget {budget:.0f}s", flush=True)
    try:
        for name, fn, timeout in cases:
            left = budget - (time.monotonic() - t_start)
            if left < 5:
                ok, text = False, "not run: the whole-run time budget is spent"
            else:
                with SERVERS_LOCK:
                    before = set(SERVERS)
                t0 = time.monotonic()
                ok, text = run_case(fn, min(timeout, left))
                while MONITORS:
                    MONITORS.pop().stop_ev.set()
                text = f"{text} [{time.monotonic() - t0:.1f}s]"
                # stop the servers this case started (the shared main server stays up)
                with SERVERS_LOCK:
                    started = [s for s in SERVERS if s not in before and s is not MAIN.get("s")]
                for s in started:
                    s.stop()
                    if not ok:
                        logs.append(s.log_path)
            held += ok
            print(f"{'HELD  ' if ok else 'BROKEN'} {name:<{width}}  {text}", flush=True)
    finally:
        if "s" in MAIN:
            MAIN["s"].stop()
        kill_all_servers()
        shutil.rmtree(snap_dir, ignore_errors=True)
    total = time.monotonic() - t_start
    print(f"{held}/{len(cases)} held ({total:.0f}s)", flush=True)
    if held != len(cases):
        if "s" in MAIN:
            logs.append(MAIN["s"].log_path)
        print("server logs kept: " + " ".join(logs), flush=True)
    with SERVERS_LOCK:
        for s in SERVERS:
            if s.log_path not in logs:
                try:
                    os.unlink(s.log_path)
                except OSError:
                    pass
    return 0 if held == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
