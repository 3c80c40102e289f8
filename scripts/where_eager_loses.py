#!/usr/bin/env python3
"""Where EAGer loses to full parallel sampling, prompt by prompt, from two run directories.

    python scripts/where_eager_loses.py runs/par runs/eager [--point eager-init_theta1.912_M8]

For every prompt both runs hold: is it solved by parallel sampling at M (any of its samples right)
and by the EAGer point; how many sequences EAGer made, where its branches forked (the fork's token
index as a share of the parent's length: 0 = at the start, 1 = at the end) and the entropies
recorded on its sequences. Prompts are grouped into

- both solve / neither solves;
- parallel only: EAGer lost them. "never branched" (1 sequence) means the model was confident all the
  way and wrong there — no entropy rule can spend more on such a prompt; "branched" means it forked
  but every branch stayed wrong (shared prefixes: how late did it fork?);
- EAGer only.

Also the entropy summary (mean and max of the recorded top-K entropies) of each group's EAGer
records, and how many parallel samples were right on each lost prompt (1 of 8 right is a lucky
draw, 6 of 8 a real loss). Grades come from the stored texts, as `eager-local report` grades them.

Then the entropy profile against difficulty, with parallel sampling's share of right samples as
the difficulty: prompts nobody solves (0), hard but winnable (below one half) and easy (one half
or more), with EAGer's sequences and its root's entropies in each band. pass@k gains come from the
middle band — one more independent sample finds an answer there — so a branching rule pays when it
spends its sequences there rather than on the unwinnable band. Last, how well the root's entropy
tells a wrong root from a right one (AUROC: the chance that a wrong root's entropy is above a right
one's; 0.5 = no signal).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from statistics import mean, median

from eager_local.eval import store
from eager_local.eval.records import regrade


def load(run_dir: Path, name: str | None, method: str) -> tuple[str, dict[str, dict]]:
    """One point's records by id: the named one, else the first decoded point of `method`."""
    if name is None:
        names = sorted(f.stem for f in run_dir.glob(f"{method}_*.jsonl") if not f.stem.endswith((".extra", ".waves")))
        names = [n for n in names if store.parse_point(n) is not None
                 and not (store.read_json(run_dir / f"{n}.stats.json") or {}).get("derived_from")]
        if not names:
            raise SystemExit(f"{run_dir}: no {method} point found")
        name = names[-1]
    path = run_dir / f"{name}.jsonl"
    if not path.exists():
        raise SystemExit(f"{path}: no such results file")
    return name, {r["id"]: regrade(r) for r in store.read_records(path)}


def fork_positions(record: dict) -> list[float]:
    """Each branch's fork point as a share of its parent's whole length (`tokens`: everything the
    parent generated, shared prefix included; 0 = at the start, 1 = at the end)."""
    by_id = {s["id"]: s for s in record["sequences"]}
    out = []
    for s in record["sequences"]:
        parent = by_id.get(s["parent"]) if s["parent"] is not None else None
        if parent is not None and parent["tokens"]:
            out.append(s["fork_at"] / parent["tokens"])
    return out


def auroc(positive: list[float], negative: list[float]) -> float | None:
    """P(a positive's score > a negative's), ties counting one half (the Mann-Whitney statistic)."""
    if not positive or not negative:
        return None
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in positive for b in negative)
    return wins / (len(positive) * len(negative))


def root(record: dict) -> dict:
    return next(s for s in record["sequences"] if s["parent"] is None)


def difficulty_bands(par: dict, eager: dict, ids: list[str]) -> None:
    bands = {"nobody solves (0)": lambda x: x == 0, "hard, winnable (0 < share < 1/2)": lambda x: 0 < x < 0.5,
             "easy (share >= 1/2)": lambda x: x >= 0.5}
    print("\nby difficulty (parallel samples right ÷ M)")
    print("| band | prompts | EAGer #S (mean) | EAGer solves | root entropy max (median) | root entropy mean (median) |")
    print("|---|---|---|---|---|---|")
    for band, test in bands.items():
        members = [i for i in ids if test(par[i]["n_correct"] / par[i]["#S"])]
        if not members:
            print(f"| {band} | 0 | | | | |")
            continue
        roots = [root(eager[i]) for i in members]
        maxes = [r["entropy_max"] for r in roots if r["entropy_max"] is not None]
        means = [r["entropy_mean"] for r in roots if r["entropy_mean"] is not None]
        print(f"| {band} | {len(members)} | {mean(eager[i]['#S'] for i in members):.2f} "
              f"| {sum(any(s['correct'] for s in eager[i]['sequences']) for i in members)} "
              f"| {median(maxes):.3f} | {median(means):.3f} |" if maxes else f"| {band} | {len(members)} | | | | |")
    roots = [root(eager[i]) for i in ids]
    for key in ("entropy_max", "entropy_mean"):
        wrong = [r[key] for r in roots if not r["correct"] and r[key] is not None]
        right = [r[key] for r in roots if r["correct"] and r[key] is not None]
        value = auroc(wrong, right)
        print(f"root {key}: AUROC wrong > right {value:.3f} ({len(wrong)} wrong, {len(right)} right roots)"
              if value is not None else f"root {key}: no AUROC (needs right and wrong roots)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("parallel_dir", type=Path)
    ap.add_argument("eager_dir", type=Path)
    ap.add_argument("--parallel-point", default=None, help="default: the decoded parallel point")
    ap.add_argument("--point", default=None, help="the EAGer point (default: the first eager-init point)")
    args = ap.parse_args()
    par_name, par = load(args.parallel_dir, args.parallel_point, store.PARALLEL)
    eager_name, eager = load(args.eager_dir, args.point, store.INIT)
    ids = [i for i in par if i in eager]
    groups: dict[str, list[str]] = {"both": [], "neither": [], "parallel only": [], "eager only": []}
    for i in ids:
        p = any(s["correct"] for s in par[i]["sequences"])
        e = any(s["correct"] for s in eager[i]["sequences"])
        groups["both" if p and e else "neither" if not (p or e) else "parallel only" if p else "eager only"].append(i)

    print(f"{par_name} ({args.parallel_dir}) vs {eager_name} ({args.eager_dir}): {len(ids)} prompts in both")
    print("| group | prompts | EAGer #S (mean) | 1 sequence | forks: median position | entropy mean / max "
          "(EAGer) | parallel right of M (mean) |")
    print("|---|---|---|---|---|---|---|")
    for group, members in groups.items():
        if not members:
            print(f"| {group} | 0 | | | | | |")
            continue
        recs = [eager[i] for i in members]
        forks = [x for r in recs for x in fork_positions(r)]
        print(f"| {group} | {len(members)} | {mean(r['#S'] for r in recs):.2f} "
              f"| {sum(r['#S'] == 1 for r in recs)} | {median(forks):.2f} ({len(forks)} forks) "
              if forks else f"| {group} | {len(members)} | {mean(r['#S'] for r in recs):.2f} "
              f"| {sum(r['#S'] == 1 for r in recs)} | – (0 forks) ", end="")
        print(f"| {mean(r['entropy']['mean'] for r in recs):.3f} / {mean(r['entropy']['max'] for r in recs):.2f} "
              f"| {mean(par[i]['n_correct'] for i in members):.2f} of {par[members[0]]['#S']} |")
    difficulty_bands(par, eager, ids)
    lost = groups["parallel only"]
    if lost:
        print("\nlost by EAGer: id (parallel right / M; EAGer #S; fork positions)")
        for i in lost:
            positions = ", ".join(f"{x:.2f}" for x in fork_positions(eager[i])) or "none"
            print(f"  {i}: {par[i]['n_correct']}/{par[i]['#S']}; #S {eager[i]['#S']}; forks at {positions}")


if __name__ == "__main__":
    main()
