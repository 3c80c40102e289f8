#!/usr/bin/env python3
"""A θ × temperature sweep in one table: the report's metrics plus two signs of repetitive text.

    python scripts/sweep_table.py runs/sweep-arith64-T0.6 runs/sweep-arith64-T1.0 [--plot sweep.png]

For every point of every run directory: T, method, θ, pass@k with a paired-bootstrap interval of its
difference to the first `parallel` point given (same prompts), cons@k, p@1, #T, #S, and
- `capped`: the share of sequences that ran into max_new_tokens (a small model that loops never stops);
- `distinct`: distinct extracted answers per prompt divided by its sequences (1 = all different).
--common compares every point on the prompts all of them have (a run over part of another's problems).
--plot draws pass@k against tokens per prompt, one curve per (method, T), θ on each point, with the
Pareto front (no other point has both more pass@k and fewer tokens) marked.

Points whose θ came from `--theta auto` (a run's theta_calibration) are then set against the curve of
the fixed θs of the same method and T: the curve's pass@k at the auto point's tokens, interpolated
between the two fixed points that bracket them, and a paired-bootstrap interval of the gap (is auto θ
ever a worse choice than the fixed θ a user could have guessed?).

Records are graded as `eager-local report` grades them: again, from their texts, with today's grader.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eager_local.eval import store
from eager_local.eval.metrics import paired_bootstrap
from eager_local.eval.metrics import aggregate
from eager_local.eval.report import _prompt_metrics, build_report


def repetition(records: dict[str, dict]) -> tuple[float, float]:
    seqs = [s for r in records.values() for s in r["sequences"]]
    capped = sum(1 for s in seqs if s.get("finish_reason") == "length") / max(1, len(seqs))
    distinct = [len({s["answer"] for s in r["sequences"]}) / len(r["sequences"])
                for r in records.values() if r["sequences"]]
    return capped, sum(distinct) / max(1, len(distinct))


def solved(records: dict[str, dict], ids: list[str]) -> list[float]:
    return [1.0 if any(s["correct"] for s in records[i]["sequences"]) else 0.0 for i in ids]


def rows(groups, common: bool = False) -> list[dict]:
    """Every point of every group; Δ pass@k against the first parallel point found (paired by prompt).

    common: keep only the prompts every point has, and compute every metric over those (a run on a
    subset of another run's problems, compared with it on that subset)."""
    out = []
    for group in groups:
        temperature = group.params["generation"]["temperature"]
        for row in group.rows:
            records = group.records[row["point"]]  # every merged dir's, re-graded
            out.append({**row, "T": temperature, "records": records})
    if common and out:
        shared = set.intersection(*(set(r["records"]) for r in out))
        for row in out:
            row["records"] = {i: row["records"][i] for i in sorted(shared)}
            summary = aggregate([_prompt_metrics(r) for r in row["records"].values()])
            row.update({key: summary.get(key) for key in ("p@1", "pass@k", "cons@k", "PR", "#T", "#S")},
                       prompts=len(shared))
    for row in out:
        row["capped"], row["distinct"] = repetition(row["records"])
    # by temperature, parallel first, then θ: directories may have been run in any order
    rank = {store.PARALLEL: 0, store.INIT: 1, store.ADAPT: 2, store.FULL: 3}
    # parallel at the largest M first: the baseline (the smaller M are derived from its samples)
    out.sort(key=lambda r: (r["T"], r["method"] != store.PARALLEL, r["theta"] or 0.0, rank.get(r["method"], 4), -r["M"]))
    base = next((r for r in out if r["method"] == store.PARALLEL), None)
    for row in out:
        ids = sorted(set(row["records"]) & set(base["records"])) if base else []
        if ids:
            a, b = solved(row["records"], ids), solved(base["records"], ids)
            low, high = paired_bootstrap(a, b)
            row["delta"] = (sum(a) / len(a) - sum(b) / len(b), low, high)
    return out


def pareto(points: list[dict]) -> set[int]:
    """Indices of points no other point beats on both pass@k (higher) and #T (lower)."""
    front = set()
    for i, p in enumerate(points):
        if not any(q["pass@k"] >= p["pass@k"] and q["#T"] <= p["#T"] and (q["pass@k"], q["#T"]) != (p["pass@k"], p["#T"])
                   for q in points):
            front.add(i)
    return front


def markdown(table: list[dict]) -> str:
    front = pareto(table)
    lines = ["| T | method | θ | prompts | pass@k | Δ vs parallel [95% CI] | cons@k | p@1 | #T | #S | capped | distinct | Pareto |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(table):
        theta = "-" if r["theta"] is None else f"{r['theta']:g}"
        delta = "{:+.3f} [{:+.3f}, {:+.3f}]".format(*r["delta"]) if "delta" in r else "-"
        lines.append(f"| {r['T']:g} | {r['method']} | {theta} | {r['prompts']} | {r['pass@k']:.3f} | {delta} "
                     f"| {r['cons@k']:.3f} | {r['p@1']:.3f} | {r['#T']:.0f} | {r['#S']:.2f} | {r['capped']:.0%} "
                     f"| {r['distinct']:.2f} | {'★' if i in front else ''} |")
    return "\n".join(lines)


def against_fixed_curve(table: list[dict], calibrated: dict[float, str]) -> list[str]:
    """One line per auto-θ point: its pass@k minus the fixed-θ curve's at the same #T, with a 95% interval.

    The curve is linear in #T between the two bracketing fixed points, prompt by prompt (each prompt's
    solved 0/1 mixed with the same weights), so the bootstrap keeps prompts paired.
    """
    lines = []
    for auto in table:
        if auto["theta"] is None or auto["theta"] not in calibrated:
            continue
        fixed = sorted((r for r in table if r["method"] == auto["method"] and r["T"] == auto["T"]
                        and r["theta"] is not None and r["theta"] not in calibrated), key=lambda r: r["#T"])
        name = f"{auto['method']} {calibrated[auto['theta']]} (θ {auto['theta']:g}, {auto['#T']:.0f} tokens, " \
               f"pass@k {auto['pass@k']:.3f})"
        left = [r for r in fixed if r["#T"] <= auto["#T"]]
        right = [r for r in fixed if r["#T"] >= auto["#T"]]
        if not left or not right:
            lines.append(f"- {name}: outside the fixed-θ curve's token range, not compared")
            continue
        lo, hi = left[-1], right[0]
        w = 1.0 if hi["#T"] == lo["#T"] else (hi["#T"] - auto["#T"]) / (hi["#T"] - lo["#T"])
        ids = sorted(set(auto["records"]) & set(lo["records"]) & set(hi["records"]))
        a = solved(auto["records"], ids)
        curve = [w * x + (1 - w) * y for x, y in zip(solved(lo["records"], ids), solved(hi["records"], ids))]
        gap = (sum(a) - sum(curve)) / len(ids)
        low, high = paired_bootstrap(a, curve)
        lines.append(f"- {name}: fixed-θ curve there {sum(curve) / len(ids):.3f} (between θ {lo['theta']:g} and "
                     f"{hi['theta']:g}) → {gap:+.3f} [{low:+.3f}, {high:+.3f}]")
    return lines


def plot(table: list[dict], path: Path, calibrated: dict[float, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = pareto(table)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    curves: dict[tuple, list[int]] = {}
    for i, r in enumerate(table):
        fixed = r["theta"] is None or r["theta"] not in calibrated
        curves.setdefault((r["method"], r["T"], fixed), []).append(i)
    markers = {"parallel": "s", "eager-init": "o", "eager-adapt": "^", "eager": "D"}
    for (method, temperature, fixed), idx in sorted(curves.items(), key=lambda kv: (kv[0][1], kv[0][0], not kv[0][2])):
        idx.sort(key=lambda i: table[i]["#T"])
        xs, ys = [table[i]["#T"] for i in idx], [table[i]["pass@k"] for i in idx]
        label = f"{method} T={temperature:g}" + ("" if fixed else " auto θ")
        ax.plot(xs, ys, linestyle="-" if fixed else "none", marker=markers.get(method, "o"), label=label,
                markersize=7 if fixed else 11)
        for i in idx:
            r = table[i]
            tag = "" if r["theta"] is None else (
                f"{r['theta']:g}" if fixed else f"{calibrated[r['theta']]} θ {r['theta']:g}")
            ax.annotate(tag, (r["#T"], r["pass@k"]), textcoords="offset points", xytext=(4, 4), fontsize=6)
    fx = sorted(front, key=lambda i: table[i]["#T"])
    ax.plot([table[i]["#T"] for i in fx], [table[i]["pass@k"] for i in fx], ":", color="grey", label="Pareto front")
    ax.set_xlabel("generated tokens per prompt (#T)")
    ax.set_ylabel("pass@k (any)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="+")
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--common", action="store_true",
                    help="Compare on the prompts every point has (a run over a subset of another's problems).")
    args = ap.parse_args()
    groups = build_report(args.run_dirs)
    table = rows(groups, common=args.common)
    print(markdown(table))
    calibrated = {c["theta"]: f"auto S={c['target']}" if c["mode"] == "auto" else c["spec"]
                  for group in groups for c in group.calibration}
    versus = against_fixed_curve(table, calibrated)
    if versus:
        print("\nauto θ against the fixed-θ curve (pass@k gap at the same tokens per prompt, 95% paired bootstrap):")
        print("\n".join(versus))
    if args.plot:
        plot(table, args.plot, calibrated)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
