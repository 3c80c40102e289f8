#!/usr/bin/env python3
"""Pin the trees the engine grows on this CPU into tests/data/pinned_trees.json, for
tests/test_pinned_trees.py.

The test holds the engine to these trees token for token, so a refactoring that changes what the
engine generates (same model, seed and settings) fails loudly. The trees are kept per CPU kernel set
(`pinned_cases.kernels`: llama.cpp's logits differ in their last bits between instruction sets).
Run it in two cases only, and say which in the commit:

- a change of behaviour is intended: every CPU's pins are stale; this writes this CPU's and drops
  the others (pin them again on those machines);
- a CPU whose kernels have no pins yet, on a checkout whose pins pass on a pinned CPU (the engine is
  then the pinned one): `--add` keeps the other CPUs' pins and adds this one's.

    python scripts/pin_trees.py [--add]      # pinned_cases.MODEL; writes tests/data/pinned_trees.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pinned_cases import CASES, ESTIMATOR_CASES, MODEL, estimator_outputs, kernels, run_case  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "pinned_trees.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--add", action="store_true", help="Keep the other CPUs' pins (this CPU is new to them).")
    args = parser.parse_args()
    from eager_local.api import EagerLocal

    llm = EagerLocal(MODEL)
    this = kernels()
    mine = {name: run_case(llm, case) for name, case in CASES.items()}
    others = json.loads(OUT.read_text())["cases"] if args.add and OUT.exists() else {}
    # A CPU pinned under another label whose trees equal this one's is the same kernel set: one entry.
    cases = {label: pins for label, pins in others.items() if label != this and pins != mine}
    cases[this] = mine
    doc = {
        "model_sha256": llm.resolved.sha256,
        "cases": cases,
        "estimator": {name: estimator_outputs(case) for name, case in ESTIMATOR_CASES.items()},
    }
    OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}: pins for {len(cases)} CPU kernel sets, this one {this!r}")


if __name__ == "__main__":
    main()
