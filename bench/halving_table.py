#!/usr/bin/env python3
"""The issue-11 table from a bench/gpu/halving.sh results folder: for each sweep, the full grid's
best point; the live halving run's pick, its own final metric and the pick's metric in the full
grid (the live run re-packs its cells, so dropout draws differ from the grid's: the first regret
is one more noisy run, the second the quality of the choice); GPU time as the run's wall (one
run at a time on the GPU, start-up included) and as the store's device-seconds; the offline
replay of the default policy on the grid evaluated at every rung step, and the 1-D shortcut
(λ = 16, full budget) from the same replay. Usage: python3 bench/halving_table.py DIR"""
import json
import os
import sqlite3
import sys


def cells(db, sweep):
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    rows = con.execute(
        "SELECT lr_a, lr_b, state, metric, step, total_steps, device_s, pruned FROM cells WHERE sweep = ?",
        (sweep,)).fetchall()
    con.close()
    return [dict(r) for r in rows]


def best(rows):
    done = [r for r in rows if r["state"] == "done" and not r["pruned"] and r["metric"] is not None]
    return max(done, key=lambda r: r["metric"]) if done else None


def main():
    out = sys.argv[1]
    replay_dir = out
    walls = {}
    for line in open(os.path.join(out, "walls.txt")):
        w = line.split()
        walls[(w[0], w[1])] = float(w[5])
    sweeps = sorted({s for s, _ in walls}, key=lambda s: list(walls).index((s, "plain")) if (s, "plain") in walls else 0)
    # Every halving run of a sweep gets its row: "halving" (the default policy) and others
    # ("halving4": reduction 4), each beside the replay of the same policy.
    runs = [(s, m) for s in sweeps for m in sorted({m for t, m in walls if t == s and m.startswith("halving")})]
    print("| sweep | full grid: best (η_A, λ) → metric | halving pick (η_A, λ) | pick's final, live (regret, pts) | pick in the full grid (regret, pts) | GPU wall grid → halving (share) | device-s grid → halving (share) | replay: regret (pts), share of steps | 1-D λ=16: regret (pts), share |")
    print("|---|---|---|---|---|---|---|---|---|")
    regrets = []
    for s, mode in runs:
        plain = cells(os.path.join(out, f"{s}-plain.sqlite"), f"{s}-plain")
        hv_path = os.path.join(out, f"{s}-{mode}.sqlite")
        hv = cells(hv_path, f"{s}-{mode}") if os.path.exists(hv_path) else []
        b, p = best(plain), best(hv)
        grid_s = sum(r["device_s"] or 0 for r in plain)
        hv_s = sum(r["device_s"] or 0 for r in hv)
        rp = os.path.join(replay_dir, f"{s}-replay.json" if mode == "halving" else f"{s}-replay-{mode}.json")
        rj = json.load(open(rp)) if os.path.exists(rp) and os.path.getsize(rp) > 0 else None
        fmt = lambda r: f"{r['lr_a']:.2e}, {r['lr_b'] / r['lr_a']:.0f}"
        regret = 100 * (b["metric"] - p["metric"]) if b and p else float("nan")
        regrets.append(regret)
        one_d = rj["one_d"] if rj else None
        in_grid = None
        if p:
            same = [r for r in plain if r["lr_a"] == p["lr_a"] and r["lr_b"] == p["lr_b"] and r["metric"] is not None]
            in_grid = same[0]["metric"] if same else None
        wg, wh = walls.get((s, "plain"), float("nan")), walls.get((s, mode), float("nan"))
        print("| " + " | ".join([
            s if mode == "halving" else f"{s} ({mode})",
            f"{fmt(b)} → {b['metric']:.4f}" if b else "-",
            fmt(p) if p else "-",
            f"{p['metric']:.4f} ({regret:+.2f})" if p else "-",
            f"{in_grid:.4f} ({100 * (b['metric'] - in_grid):+.2f})" if in_grid is not None else "-",
            f"{wg:.1f} → {wh:.1f} s ({wh / wg:.2f})",
            f"{grid_s:.1f} → {hv_s:.1f} ({hv_s / grid_s:.2f})" if grid_s else "-",
            f"{100 * rj['regret']:.2f}, {rj['cost_fraction']:.2f}" if rj else "-",
            f"{100 * one_d['regret']:.2f}, {one_d['cost_fraction']:.2f}" if one_d else "-",
        ]) + " |")
    finite = sorted(r for r in regrets if r == r)
    if finite:
        med = finite[len(finite) // 2] if len(finite) % 2 else (finite[len(finite) // 2 - 1] + finite[len(finite) // 2]) / 2
        print(f"\nlive regret (points of the metric, full-grid best − halving pick): max {max(finite):.2f}, median {med:.2f}")


main()
