#!/usr/bin/env python3
"""Write tests/data/pinned_trees.json: trees the engine produced, for tests/test_pinned_trees.py.

The test holds today's engine to these trees token for token, so a refactoring that changes what
the engine generates (same model, seed and settings) fails loudly. Regenerate only when a change
of behaviour is intended, and say why in the commit:

    python scripts/pin_trees.py            # pinned_cases.MODEL; writes tests/data/pinned_trees.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pinned_cases import CASES, ESTIMATOR_CASES, MODEL, estimator_outputs, run_case  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "pinned_trees.json"


def main() -> None:
    from eager_local.api import EagerLocal

    llm = EagerLocal(MODEL)
    doc = {
        "model_sha256": llm.resolved.sha256,
        "cases": {name: run_case(llm, case) for name, case in CASES.items()},
        "estimator": {name: estimator_outputs(case) for name, case in ESTIMATOR_CASES.items()},
    }
    OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
