#!/usr/bin/env python3
"""Judge a proxy run (scripts/proxy-run.sh) from the load tool's JSON reports.

Prints a results table (also written as summary.md / summary.json next to the reports) and
exits 1 when a pass condition is violated. Standard library only.
"""
import argparse
import json
import os
import sys

DOCUMENTED = {"200", "400", "401", "413", "422", "429", "503", "504"}
PHASES = ["warmup", "ttft-direct-1", "ttft-nginx-1", "ttft-direct-2", "ttft-nginx-2", "main", "overload"]
TTFT_MAX_DELTA_MS = 5.0
RSS_MAX_GROWTH = 1.10


def load(d, name):
    path = os.path.join(d, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def fmt(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--mode", default="")
    ap.add_argument("--rss-warm-kb", type=int, required=True)
    ap.add_argument("--rss-after-kb", type=int, required=True)
    ap.add_argument("--panics", type=int, default=0)
    ap.add_argument("--elapsed", type=int, default=0)
    ap.add_argument("--deadline", type=int, default=0)
    a = ap.parse_args()

    reports = {p: load(a.dir, p) for p in PHASES}
    checks = []  # (name, ok, detail)

    def check(name, ok, detail):
        checks.append((name, bool(ok), detail))

    missing = [p for p, r in reports.items() if r is None]
    check("all phases ran", not missing, "missing: " + ", ".join(missing) if missing else "7 reports")

    for p, r in reports.items():
        if r is None:
            continue
        c = r["counts"]
        lost = c["lost"]
        check(f"{p}: 0 lost", lost == 0, f"lost {lost} {r['lost_by_reason'] or ''}".strip())
        odd = sorted(set(r["status_counts"]) - DOCUMENTED)
        bad = c["failures"]
        check(
            f"{p}: documented answers only",
            bad == 0 and not odd,
            f"contract failures {bad} {r['failures_by_reason'] or ''}; statuses {r['status_counts']}",
        )
        rid = r["request_id"]
        check(f"{p}: x-request-id on every response", rid["missing"] + rid["mismatch"] == 0,
              f"missing {rid['missing']}, changed {rid['mismatch']}")

    main_r, over = reports["main"], reports["overload"]
    if main_r and over:
        sustained = main_r["throughput"]["requests_per_s"]
        offered = over["rate"] or 0.0
        sent_rate = over["throughput"]["requests_per_s"]
        check("overload: offered >= 2x sustained", offered >= 2 * sustained and sent_rate >= 2 * sustained,
              f"offered {offered} req/s, sent {sent_rate} req/s, sustained {sustained} req/s")
        shed = over["counts"]["shed"]
        timeouts = over["lost_by_reason"].get("timeout", 0)
        check("overload: shed with 429/503 + Retry-After, no timeouts", shed > 0 and timeouts == 0,
              f"shed {shed} of {over['counts']['sent']} ({100.0 * shed / max(1, over['counts']['sent']):.0f}%), "
              f"timeouts {timeouts}, statuses {over['status_counts']}")

    growth = a.rss_after_kb / max(1, a.rss_warm_kb)
    check(f"server RSS after run <= {RSS_MAX_GROWTH}x after warm-up", growth <= RSS_MAX_GROWTH,
          f"{a.rss_warm_kb / 1024:.1f} MiB -> {a.rss_after_kb / 1024:.1f} MiB (x{growth:.3f})")

    def ttft_p50(name):
        r = reports[name]
        return r["ttft_ms"]["p50_ms"] if r and r.get("ttft_ms") else None

    direct = [ttft_p50("ttft-direct-1"), ttft_p50("ttft-direct-2")]
    proxied = [ttft_p50("ttft-nginx-1"), ttft_p50("ttft-nginx-2")]
    delta = None
    if None not in direct and None not in proxied:
        delta = sum(proxied) / 2 - sum(direct) / 2
        check(f"streaming unbuffered: TTFT p50 nginx - direct < {TTFT_MAX_DELTA_MS} ms", delta < TTFT_MAX_DELTA_MS,
              f"direct {direct[0]:.2f}/{direct[1]:.2f} ms, nginx {proxied[0]:.2f}/{proxied[1]:.2f} ms, "
              f"delta {delta:+.2f} ms")
    else:
        check("streaming unbuffered: TTFT measured", False, f"direct {direct}, nginx {proxied}")

    check("no panics in the server logs", a.panics == 0, f"{a.panics} 'panicked' lines")

    # ---- table ----
    head = ["phase", "requests", "req/s", "ok", "p50 ms", "p95 ms", "p99 ms", "TTFT p50", "shed", "errors", "lost",
            "fail"]
    rows = []
    for p in PHASES:
        r = reports[p]
        if r is None:
            continue
        c, lat, tt = r["counts"], r.get("latency_ms") or {}, r.get("ttft_ms") or {}
        rows.append([
            p, str(c["sent"]), fmt(r["throughput"]["requests_per_s"]),
            str(c["success"] + c["rejected"] + c["disconnected"]),
            fmt(lat.get("p50_ms")), fmt(lat.get("p95_ms")), fmt(lat.get("p99_ms")), fmt(tt.get("p50_ms"), 2),
            str(c["shed"]), str(c["errors"] + c["stream_errors"]), str(c["lost"]), str(c["failures"]),
        ])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |")
    table = "\n".join(lines)
    ok_all = all(ok for _, ok, _ in checks)
    out = [f"proxy run ({a.mode}), {a.elapsed} s", "", table, "",
           "ok = success + bad inputs rejected with 4xx + deliberate client disconnects; latency/TTFT of successes.", ""]
    for name, ok, detail in checks:
        out.append(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}")
    if a.deadline and a.elapsed > a.deadline:
        out.append(f"[WARN] took {a.elapsed} s, budget {a.deadline} s")
    out.append(f"PROXY RUN: {'PASS' if ok_all else 'FAIL'}")
    text = "\n".join(out)
    print(text)
    with open(os.path.join(a.dir, "summary.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(a.dir, "summary.json"), "w") as f:
        json.dump({"mode": a.mode, "elapsed_s": a.elapsed, "passed": ok_all,
                   "rss_warm_kb": a.rss_warm_kb, "rss_after_kb": a.rss_after_kb, "ttft_delta_ms": delta,
                   "checks": [{"name": n, "ok": o, "detail": d} for n, o, d in checks]}, f, indent=2)
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
