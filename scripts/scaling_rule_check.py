#!/usr/bin/env python3
"""Scaling-rule check: feed the autoscalers' formula with the scheduler gauges scraped during a
multi-replica run and print the replica counts it would ask for, per load step.

Input: the JSON reports of scripts/multi_replica.py (`samples`: per replica and sampling round,
vllm:num_requests_waiting and vllm:num_requests_running, the aliases of flamingo_queue_depth and
flamingo_active_sequences).

Rule (the chart's HPA and KEDA objects, deploy/helm/flamingo-serve):
  load per replica  = waiting + running                      (recording rule flamingo_requests_in_system)
  HPA (Pods metric, AverageValue target):
      desired = ceil(current * avg_load / target), unchanged while |avg_load/target - 1| <= 0.1
  KEDA (prometheus trigger, threshold = target): desired = ceil(sum(load) / target)
  both clamped to [min, max].
Exits 1 unless the desired count at the highest load step is above the one at the lowest step
(the metric must move with load).
"""

import argparse
import json
import math
import statistics
import sys

HPA_TOLERANCE = 0.1


def hpa_desired(current, avg, target, lo, hi):
    ratio = avg / target
    if abs(ratio - 1.0) <= HPA_TOLERANCE:
        return current
    return max(lo, min(hi, math.ceil(current * ratio)))


def keda_desired(total, target, lo, hi):
    return max(lo, min(hi, math.ceil(total / target)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--current", type=int, default=3, help="replicas serving during the run")
    ap.add_argument("--target", type=float, default=4.0, help="targetLoadPerReplica")
    ap.add_argument("--min", type=int, default=1)
    ap.add_argument("--max", type=int, default=8)
    args = ap.parse_args()

    print(
        f"scaling rule: desired = ceil({args.current} * avg(waiting+running) / {args.target:g}), "
        f"clamped to [{args.min}, {args.max}] (HPA tolerance {HPA_TOLERANCE:.0%}; KEDA: ceil(sum/{args.target:g}))"
    )
    print("| run | step | clients | rounds | avg waiting | avg running | load/replica (mean, max) | HPA desired (median, max) | KEDA desired (median, max) |")
    print("|---|---|---|---|---|---|---|---|---|")
    first_last = []
    for path in args.reports:
        with open(path) as f:
            rep = json.load(f)
        rounds = {}
        for s in rep["samples"]:
            # One sampling round = one timestamp bucket per replica set (the sampler scrapes the
            # replicas one after the other, a few ms apart).
            key = (s["step"], round(s["t"] * 2) / 2)
            rounds.setdefault(key, []).append(s)
        per_step = {}
        for (step, _), ss in sorted(rounds.items()):
            if len(ss) != args.current:
                continue
            loads = [x["waiting"] + x["running"] for x in ss]
            avg = sum(loads) / len(loads)
            per_step.setdefault(step, []).append(
                {
                    "avg": avg,
                    "waiting": sum(x["waiting"] for x in ss) / len(ss),
                    "running": sum(x["running"] for x in ss) / len(ss),
                    "hpa": hpa_desired(args.current, avg, args.target, args.min, args.max),
                    "keda": keda_desired(sum(loads), args.target, args.min, args.max),
                }
            )
        medians = []
        for step, rs in sorted(per_step.items()):
            clients = rep["steps"][step][0]
            hpa = [r["hpa"] for r in rs]
            keda = [r["keda"] for r in rs]
            med = statistics.median(hpa)
            medians.append(med)
            print(
                f"| {rep['label']} | {step} | {clients} | {len(rs)} | "
                f"{statistics.mean(r['waiting'] for r in rs):.2f} | {statistics.mean(r['running'] for r in rs):.2f} | "
                f"{statistics.mean(r['avg'] for r in rs):.2f}, {max(r['avg'] for r in rs):.2f} | "
                f"{med:g}, {max(hpa)} | {statistics.median(keda):g}, {max(keda)} |"
            )
        if len(medians) >= 2:
            first_last.append((rep["label"], medians[0], medians[-1]))
    bad = [(label, a, b) for label, a, b in first_last if not b > a]
    if not first_last or bad:
        print(f"scaling rule check: FAIL: desired replicas did not rise with load {bad or 'no data'}", file=sys.stderr)
        sys.exit(1)
    print(
        "scaling rule check: PASS ("
        + "; ".join(f"{label}: {a:g} -> {b:g} replicas from the lowest to the highest load step" for label, a, b in first_last)
        + ")"
    )


if __name__ == "__main__":
    main()
