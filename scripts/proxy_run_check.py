#!/usr/bin/env python3
"""Judge a proxy run (scripts/proxy-run.sh) from the load tool's JSON reports.

Prints a results table (also written as summary.md / summary.json next to the reports) and
exits 1 when a pass condition is violated. Standard library only.
"""
import argparse
import glob
import json
import os
import statistics
import sys

DOCUMENTED = {"200", "400", "401", "413", "422", "429", "503", "504"}
FIXED = ["warmup", "main", "overload"]
TTFT_MAX_DELTA_MS = 5.0
RSS_MAX_GROWTH = 1.10


def load(d, name):
    path = os.path.join(d, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def ttft_samples(d, side):
    """Pooled TTFTs (ms) of the successful streams of all rounds on one side (direct/nginx)."""
    out = []
    for path in sorted(glob.glob(os.path.join(d, f"ttft-{side}-*.jsonl"))):
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                if rec["class"] == "success" and rec["ttft_ms"] is not None:
                    out.append(rec["ttft_ms"])
    return out


def phase_names(d):
    """warmup, the TTFT rounds in order, main, overload."""
    def round_key(name):
        side, _, i = name[len("ttft-"):].partition("-")
        return (int(i) if i.isdigit() else 0, side)
    rounds = sorted((os.path.basename(p)[:-5] for p in glob.glob(os.path.join(d, "ttft-*.json"))), key=round_key)
    return ["warmup"] + rounds + ["main", "overload"]


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

    phases = phase_names(a.dir)
    reports = {p: load(a.dir, p) for p in phases}
    checks = []  # (name, ok, detail)

    def check(name, ok, detail):
        checks.append((name, bool(ok), detail))

    missing = [p for p, r in reports.items() if r is None]
    n_rounds = sum(1 for p in phases if p.startswith("ttft-"))
    check("all phases ran", not missing and n_rounds > 0,
          "missing: " + ", ".join(missing) if missing else f"{len(phases)} reports ({n_rounds} TTFT rounds)")

    # Per phase; the TTFT rounds are judged together.
    groups = {}
    for p, r in reports.items():
        if r is not None:
            groups.setdefault("ttft rounds" if p.startswith("ttft-") else p, []).append(r)
    for g, rs in groups.items():
        lost = sum(r["counts"]["lost"] for r in rs)
        reasons = {}
        for r in rs:
            for k, v in r["lost_by_reason"].items():
                reasons[k] = reasons.get(k, 0) + v
        check(f"{g}: 0 lost", lost == 0, f"lost {lost} {reasons or ''}".strip())
        statuses, fails = {}, {}
        for r in rs:
            for k, v in r["status_counts"].items():
                statuses[k] = statuses.get(k, 0) + v
            for k, v in r["failures_by_reason"].items():
                fails[k] = fails.get(k, 0) + v
        odd = sorted(set(statuses) - DOCUMENTED)
        n_fail = sum(r["counts"]["failures"] for r in rs)
        check(f"{g}: documented answers only", n_fail == 0 and not odd,
              f"contract failures {n_fail}{' ' + str(fails) if fails else ''}; statuses {statuses}")
        missing = sum(r["request_id"]["missing"] for r in rs)
        changed = sum(r["request_id"]["mismatch"] for r in rs)
        check(f"{g}: x-request-id on every response", missing + changed == 0,
              f"missing {missing}, changed {changed}")

    main_r, over = reports.get("main"), reports.get("overload")
    if main_r and over:
        sustained = main_r["throughput"]["requests_per_s"]
        offered = over["rate"] or 0.0
        sent_rate = over["throughput"]["requests_per_s"]
        # The overloaded server is the small one (tiny queue and batch), so what it can sustain is what
        # it served; the load tool on the same two cores may not reach the configured 3x of the main
        # server's rate once that is fast, but what it sent must still be >= 2x the overloaded capacity.
        served = over["throughput"]["success_per_s"]
        check("overload: offered >= 2x sustained", offered >= 2 * sustained and sent_rate >= 2 * served,
              f"offered {offered} req/s (main run sustained {sustained}), sent {sent_rate} req/s, "
              f"overloaded server served {served} req/s")
        shed = over["counts"]["shed"]
        timeouts = over["lost_by_reason"].get("timeout", 0)
        check("overload: shed with 429/503 + Retry-After, no timeouts", shed > 0 and timeouts == 0,
              f"shed {shed} of {over['counts']['sent']} ({100.0 * shed / max(1, over['counts']['sent']):.0f}%), "
              f"timeouts {timeouts}, statuses {over['status_counts']}")

    growth = a.rss_after_kb / max(1, a.rss_warm_kb)
    peak = ""
    rss_path = os.path.join(a.dir, "rss.txt")
    if os.path.exists(rss_path):
        with open(rss_path) as f:
            kb = [int(p[1]) for p in (line.split() for line in f) if len(p) == 2 and p[1].isdigit()]
        if kb:
            peak = f", peak {max(kb) / 1024:.1f} MiB over {len(kb)} samples (rss.txt)"
    check(f"server RSS after run <= {RSS_MAX_GROWTH}x after warm-up", growth <= RSS_MAX_GROWTH,
          f"{a.rss_warm_kb / 1024:.1f} MiB -> {a.rss_after_kb / 1024:.1f} MiB (x{growth:.3f}; less the prefix cache's bytes){peak}")

    direct, proxied = ttft_samples(a.dir, "direct"), ttft_samples(a.dir, "nginx")
    delta = None
    if direct and proxied:
        md, mp = statistics.median(direct), statistics.median(proxied)
        delta = mp - md
        check(f"streaming unbuffered: TTFT median nginx - direct < {TTFT_MAX_DELTA_MS} ms", delta < TTFT_MAX_DELTA_MS,
              f"direct {md:.2f} ms (n={len(direct)}), nginx {mp:.2f} ms (n={len(proxied)}), delta {delta:+.2f} ms")
    else:
        check("streaming unbuffered: TTFT measured", False, f"{len(direct)} direct, {len(proxied)} nginx samples")

    check("no panics in the server logs", a.panics == 0, f"{a.panics} 'panicked' lines")

    # ---- table ----
    head = ["phase", "requests", "req/s", "ok", "p50 ms", "p95 ms", "p99 ms", "TTFT p50", "shed", "errors", "lost",
            "fail"]
    rows = []

    def row(name, r):
        c, lat, tt = r["counts"], r.get("latency_ms") or {}, r.get("ttft_ms") or {}
        rows.append([
            name, str(c["sent"]), fmt(r["throughput"]["requests_per_s"]),
            str(c["success"] + c["rejected"] + c["disconnected"]),
            fmt(lat.get("p50_ms")), fmt(lat.get("p95_ms")), fmt(lat.get("p99_ms")), fmt(tt.get("p50_ms"), 2),
            str(c["shed"]), str(c["errors"] + c["stream_errors"]), str(c["lost"]), str(c["failures"]),
        ])

    if reports.get("warmup"):
        row("warmup", reports["warmup"])
    for side, samples in (("direct", direct), ("nginx", proxied)):
        rs = [r for p, r in reports.items() if p.startswith(f"ttft-{side}-") and r]
        if rs:
            sent = sum(r["counts"]["sent"] for r in rs)
            rows.append([f"ttft {side} ({len(rs)} rounds)", str(sent), "-",
                         str(sum(r["counts"]["success"] for r in rs)), "-", "-", "-",
                         fmt(statistics.median(samples), 2) if samples else "-", "0",
                         str(sum(r["counts"]["errors"] + r["counts"]["stream_errors"] for r in rs)),
                         str(sum(r["counts"]["lost"] for r in rs)), str(sum(r["counts"]["failures"] for r in rs))])
    for p in ("main", "overload"):
        if reports.get(p):
            row(p, reports[p])
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
