"""Full parallel sampling as a curve: `eval` with `parallel` decodes only the largest M and derives
M = 1, 2, 4, … from its samples (each sample has its own random stream), on the real default model.

The oracle is a real `-M 2` run with the same seed: the M = 2 point derived from an M = 4 run must
hold the very same samples, sequence for sequence. (Batch composition could in principle change
llama.cpp's float rounding between an 8-row and a 16-row batch; on this model and these prompts it
does not, so the texts are compared whole.)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cli_helpers import eager
from eager_local.eval import store

THREADS = ["--threads", os.environ["EAGER_LOCAL_THREADS"]] if os.environ.get("EAGER_LOCAL_THREADS") else []
IDS = [f"arith-L{i % 5 + 1}-{i:04d}" for i in range(4)]


def eval_args(out: Path, *extra) -> list[str]:
    # the chat template makes this model write 24 tokens per sample (raw prompts end at once)
    return ["eval", "--dataset", "arith:4", "-n", "24", "--no-progress", "--out", str(out), *THREADS, *extra]


def by_id(run_dir: Path, name: str) -> dict[str, dict]:
    return {r["id"]: r for r in store.read_records(run_dir / f"{name}.jsonl")}


def stats(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / f"{name}.stats.json").read_text())


@pytest.fixture(scope="module")
def curve_run(tmp_path_factory, default_model_path):
    """parallel and EAGer-init at M = 4: the parallel curve M = 1, 2 comes with it."""
    out = tmp_path_factory.mktemp("runs") / "m4"
    r = eager(*eval_args(out, "--method", "parallel,eager-init", "-M", "4", "--theta", "2.5"))
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def m2_run(tmp_path_factory, default_model_path):
    out = tmp_path_factory.mktemp("runs") / "m2"
    r = eager(*eval_args(out, "--method", "parallel", "-M", "2"))
    assert r.returncode == 0, r.stderr
    return out


def test_derived_m2_holds_the_samples_of_a_real_m2_run(curve_run, m2_run):
    derived, real = by_id(curve_run, "parallel_M2"), by_id(m2_run, "parallel_M2")
    assert sorted(derived) == sorted(real) == IDS
    assert stats(m2_run, "parallel_M2").get("derived_from") is None  # decoded: the largest M of that run
    for pid in IDS:
        d, r = derived[pid], real[pid]
        assert [s["text"] for s in d["sequences"]] == [s["text"] for s in r["sequences"]], pid
        for key in ("tokens", "new_tokens", "finish_reason", "answer", "correct", "entropy_mean", "entropy_max"):
            assert [s[key] for s in d["sequences"]] == [s[key] for s in r["sequences"]], (pid, key)
        for key in ("M", "#S", "#T", "n_correct", "steps", "events", "entropy", "finish_counts", "cut_by_budget"):
            assert d[key] == r[key], (pid, key)
        assert d["derived_from"] == "parallel_M4" and "derived_from" not in r
    assert sum(len(s["text"]) for r in real.values() for s in r["sequences"]) > 100  # real text was compared


def test_the_curve_points_are_written_and_marked(curve_run):
    m4 = by_id(curve_run, "parallel_M4")
    m4_stats = stats(curve_run, "parallel_M4")
    assert "derived_from" not in m4_stats and all(r["#S"] == 4 for r in m4.values())
    for m in (1, 2):
        name = f"parallel_M{m}"
        points = by_id(curve_run, name)
        assert sorted(points) == IDS
        for pid, rec in points.items():
            source = m4[pid]["sequences"][:m]
            assert [s["text"] for s in rec["sequences"]] == [s["text"] for s in source]
            assert rec["#S"] == m and rec["#T"] == sum(s["new_tokens"] for s in source)
        s = stats(curve_run, name)
        share = sum(r["#T"] for r in points.values()) / sum(r["#T"] for r in m4.values())
        assert s["derived_from"] == "parallel_M4" and s["complete"] and s["peak_rss_mb"] is None
        assert s["wall_time"] == pytest.approx(m4_stats["wall_time"] * share, abs=1e-3)  # pro rata by tokens
    report = eager("report", str(curve_run), "--format", "json")
    assert report.returncode == 0, report.stderr
    (group,) = json.loads(report.stdout)
    rows = {row["point"]: row for row in group["points"]}
    assert sorted(rows) == ["eager-init_theta2.5_M4", "parallel_M1", "parallel_M2", "parallel_M4"]
    assert [rows[f"parallel_M{m}"]["derived_from"] for m in (1, 2, 4)] == ["parallel_M4", "parallel_M4", None]
    assert rows["parallel_M1"]["#S"] == 1 and rows["parallel_M2"]["#S"] == 2
    init = rows["eager-init_theta2.5_M4"]
    assert init["tokens_vs_parallel"] == pytest.approx(init["#T"] / rows["parallel_M4"]["#T"])
    table = eager("report", str(curve_run)).stdout
    assert " 1† " in table and " 2† " in table and "† derived from parallel_M4" in table


def test_resume_rebuilds_the_curve_from_the_finished_source(curve_run, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(curve_run, run)
    # As if parallel_M4 had been interrupted after two prompts: its derived points are incomplete too.
    lines = (run / "parallel_M4.jsonl").read_text().splitlines(keepends=True)
    (run / "parallel_M4.jsonl").write_text("".join(lines[:2]))
    (run / "parallel_M4.stats.json").write_text(json.dumps({**stats(run, "parallel_M4"), "complete": False}))
    (run / "parallel_M2.jsonl").unlink()
    (run / "parallel_M2.stats.json").unlink()
    (group,) = json.loads(eager("report", str(run), "--format", "json").stdout)
    complete = {row["point"]: row["complete"] for row in group["points"]}
    assert complete["parallel_M4"] is False and complete["parallel_M1"] is False and "parallel_M2" not in complete

    r = eager(*eval_args(run, "--method", "parallel,eager-init", "-M", "4", "--theta", "2.5"))
    assert r.returncode == 0, r.stderr
    assert sorted(by_id(run, "parallel_M4")) == IDS
    before = by_id(curve_run, "parallel_M2")
    for m in (1, 2):
        rebuilt = by_id(run, f"parallel_M{m}")
        assert stats(run, f"parallel_M{m}")["complete"]
        assert {pid: [s["text"] for s in rec["sequences"]] for pid, rec in rebuilt.items()} == {
            pid: [s["text"] for s in rec["sequences"][:m]] for pid, rec in before.items()}
