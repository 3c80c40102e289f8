"""`eval --ray` on a real Ray cluster on loopback: the records equal a one-process run's, through the
death of a worker and of the driver, for the confidence methods too.

A cluster of 2 CPUs is started with `ray start --head` (as a user starts one), and `eager-local eval
--ray ADDRESS` runs against it with --threads 1, so it places 2 actors. The reference is the same
command without --ray. A record's every field but its wall time must match: a prompt's random
streams depend on its position in the dataset, never on the actor that drew it. The wave journals
(one row per prompt and round) are compared the same way, per-token confidences and finish reasons
included: a confidence method's watch runs in the actor and must bring back exactly what it saw.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from eager_local.cluster.runner import actor_count  # noqa: E402

RAY = str(Path(sys.executable).parent / "ray")
# Long enough (tens of seconds on one core) for a kill to land mid-run.
EVAL = ["eval", "--dataset", "arith:16:7", "--method", "parallel,eager-init", "-M", "4", "-n", "40", "--theta", "2.0",
        "--threads", "1", "--no-progress"]
FIRST_POINT = "parallel_M4.jsonl"
# The confidence methods: at -M 8 deepconf's watched wave and eager-conf's later waves (EAGer trees,
# whose forks start from their parent's confidences) stop sequences `low_confidence`; deepconf-high
# borrows deepconf-low's warm-up. A few tens of seconds on one core.
CONF_EVAL = ["eval", "--dataset", "arith:8:7", "--method", "deepconf-low,deepconf-high,eager-conf", "-M", "8",
             "-n", "40", "--theta", "2.0", "--threads", "1", "--no-progress"]
CONF_FIRST_JOURNAL = "deepconf-low_M8.waves.jsonl"


def eager_local(args, **kwargs):
    return subprocess.run([sys.executable, "-m", "eager_local", *args], capture_output=True, text=True, **kwargs)


def row_key(row: dict) -> tuple:
    """A record's place: its prompt, and its round in a wave journal (which logs a row per wave)."""
    return row["id"], row.get("round", 0)


def records(run: Path) -> dict[str, list[dict]]:
    """Every results file and wave journal of a run: its rows without their wall time, in key order."""
    out = {}
    for path in sorted(run.glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for row in rows:
            row.pop("wall_time", None)
        out[path.name] = sorted(rows, key=row_key)
    return out


def assert_same_records(run: Path, reference: Path) -> None:
    """Every record of the reference, once, complete; equal to the reference's, except that an EAGer
    record may have drawn other tokens: on some CPUs (an Intel Xeon with AVX-512 here) llama.cpp
    gives a row decoded alone other last bits of its logits than the same row decoded in a batch,
    and an EAGer root decodes alone when its prompt is the last one running on its process, which
    depends on how the prompts were spread over the actors. Parallel sampling's rows never decode
    alone (M >= 2): those records must be equal. A systematic fault (a lost seed, a wrong prefix)
    would change most records, so at most a quarter of a point's records may differ."""
    got, want = records(run), records(reference)
    assert sorted(got) == sorted(want)
    for name in want:
        keys = [row_key(r) for r in got[name]]
        assert len(keys) == len(set(keys)), f"{name}: a prompt (or wave) written twice"
        assert len(keys) == len(want[name]), f"{name}: {len(want[name]) - len(keys)} prompt(s) lost"
        if name.startswith("parallel"):
            assert got[name] == want[name], name
            continue
        differ = [g for g, w in zip(got[name], want[name]) if g != w]
        assert len(differ) <= len(want[name]) // 4, (name, [row_key(g) for g in differ])
        for g in differ:
            assert g["started"] and all(s["finish_reason"] for s in g["sequences"]), (name, row_key(g))
            assert g["#T"] == sum(s["new_tokens"] for s in g["sequences"]), (name, row_key(g))


def finish_reasons(run: Path, name: str, *, forks: bool = False) -> list[str]:
    """The finish reasons of a wave journal's sequences (only the forked ones: `forks`)."""
    return [s["finish_reason"] for r in records(run)[name] for s in r["sequences"]
            if not forks or s["parent"] is not None]


def lines(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text().splitlines() if line.strip())
    except FileNotFoundError:
        return 0


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def worker_pids() -> list[int]:
    """The processes of the EvalWorker actors (Ray titles an actor's process `ray::EvalWorker`)."""
    found = subprocess.run(["pgrep", "-f", "ray::EvalWorker"], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "run"
    r = eager_local([*EVAL, "--out", str(out)])
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def confidence_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("plain-conf") / "run"
    r = eager_local([*CONF_EVAL, "--out", str(out)])
    assert r.returncode == 0, r.stderr
    # The data must exercise what the watch decides: early stops in both methods, forked sequences
    # of eager-conf among them, and a borrowed warm-up.
    assert "low_confidence" in finish_reasons(out, CONF_FIRST_JOURNAL)
    assert "low_confidence" in finish_reasons(out, "eager-conf_theta2_M8.waves.jsonl", forks=True)
    assert all(r.get("borrowed_from") == "deepconf-low"
               for r in records(out)["deepconf-high_M8.waves.jsonl"] if r["round"] == 1)
    confs = [s["confidences"] for r in records(out)[CONF_FIRST_JOURNAL] for s in r["sequences"]]
    assert confs and all(len(c) > 0 for c in confs)
    return out


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tmp_path_factory.mktemp("ray")
    # A loopback cluster for one test run: no token authentication (the drivers would need the token).
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    start = subprocess.run([RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                            "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats",
                            "--temp-dir", str(temp)], capture_output=True, text=True, env=env, timeout=120)
    assert start.returncode == 0, start.stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        # Only this cluster's processes (each names its session under `temp`): `ray stop` would end
        # every Ray cluster of the machine, a developer's own included.
        subprocess.run(["pkill", "-TERM", "-f", str(temp)], capture_output=True)
        time.sleep(2)
        subprocess.run(["pkill", "-KILL", "-f", str(temp)], capture_output=True)


def run_and_kill_a_worker(args: list[str], ready, what: str, settle: float) -> str:
    """Start `eager-local <args>` on the cluster, wait until `ready()` and two actors are up, let it
    run `settle` seconds more, SIGKILL one actor; the run's stderr once it ends (it must end well)."""
    proc = subprocess.Popen([sys.executable, "-m", "eager_local", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (ready() and len(worker_pids()) == 2) or proc.poll() is not None, 300, what)
        time.sleep(settle)
        assert proc.poll() is None, "the run ended before a worker could be killed"
        pids = worker_pids()
        assert len(pids) == 2, pids
        os.kill(pids[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    return stderr


def test_a_killed_worker_loses_nothing(reference, ray_address, tmp_path):
    out = tmp_path / "run"
    # settle: both actors hold their share of the prompts by then
    stderr = run_and_kill_a_worker([*EVAL, "--ray", ray_address, "--out", str(out)],
                                   lambda: lines(out / FIRST_POINT) >= 3, "the first records from two actors", 2)
    assert "Ray: 2 actor(s) x 1 thread(s)" in stderr
    # The driver saw the death and handed the prompts the actor held to the other one.
    assert re.search(r"Ray actor \d died \(\w+\); \d+ prompt\(s\) go to the others", stderr), stderr
    assert_same_records(out, reference)


def test_a_lost_driver_resumes(reference, ray_address, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "eager_local", *EVAL, "--ray", ray_address, "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: lines(out / FIRST_POINT) >= 3 or proc.poll() is not None, 300, "the first records")
        assert proc.poll() is None, "the run ended before the driver could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Records arrive in bursts, so the first point may be complete by the kill; the run as a whole
    # (16 prompts x 2 decoded points) must not be, or there is nothing to resume. The parallel
    # points derived from the first (M = 1, 2) are files of their own and are not counted.
    def derived(path: Path) -> bool:
        stats = path.with_suffix(".stats.json")
        return stats.exists() and bool(json.loads(stats.read_text()).get("derived_from"))

    done_before = sum(lines(path) for path in out.glob("*.jsonl") if not derived(path))
    assert 3 <= done_before < 32
    # The actors belonged to the killed driver: Ray ends them with it.
    wait_for(lambda: not worker_pids(), 60, "the dead driver's actors to end")
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert_same_records(out, reference)


def test_an_unreachable_cluster_is_one_line(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = eager_local([*EVAL, "--ray", f"127.0.0.1:{port}", "--out", str(tmp_path / "run")], timeout=120)
    assert r.returncode == 2
    lines_ = r.stderr.strip().splitlines()
    assert len(lines_) == 1 and lines_[0].startswith(f"Error: cannot join the Ray cluster at 127.0.0.1:{port}"), r.stderr


def test_a_budget_is_refused_with_ray(tmp_path):
    r = eager_local([*EVAL, "--ray", "--budget", "1000", "--out", str(tmp_path / "run")])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "Error: --budget cannot be used with --ray: the actors do not share one token counter"]
    assert not (tmp_path / "run").exists()


def test_confidence_methods_on_ray_equal_one_process(confidence_reference, ray_address, tmp_path):
    out = tmp_path / "run"
    r = eager_local([*CONF_EVAL, "--ray", ray_address, "--out", str(out)], timeout=600)
    assert r.returncode == 0, r.stderr
    assert "Ray: 2 actor(s) x 1 thread(s)" in r.stderr
    assert_same_records(out, confidence_reference)


def test_a_killed_worker_loses_no_confidences(confidence_reference, ray_address, tmp_path):
    """The prompts of a dead actor are redone by the other with fresh watches: not one confidence of
    the dead attempt may reach a record."""
    wait_for(lambda: not worker_pids(), 60, "the actors of earlier runs to end")
    out = tmp_path / "run"
    # The journal opens once the actors are ready; its first round (the warm-up waves of all 8
    # prompts, shared by both actors) then takes several seconds: the kill lands inside it.
    stderr = run_and_kill_a_worker([*CONF_EVAL, "--ray", ray_address, "--out", str(out)],
                                   lambda: (out / CONF_FIRST_JOURNAL).exists(), "the first round on two actors", 3)
    assert re.search(r"Ray actor \d died \(\w+\); [1-9]\d* prompt\(s\) go to the others", stderr), stderr
    assert_same_records(out, confidence_reference)


def test_request_hooks_travel_only_as_a_watch():
    """What runs in an actor must bring its state back: hooks that are a watch's methods do; any
    other hook is refused before it is sent, rather than watched where nobody reads it."""
    from eager_local.cluster.worker import watch_of
    from eager_local.engine import Request
    from eager_local.eval.deepconf import Watch

    assert watch_of(Request(tokens=[1])) is None
    watch = Watch(4, None)
    request = Request(tokens=[1], on_logprobs=watch.on_logprobs, on_token=watch.on_token)
    assert watch_of(request) is watch
    with pytest.raises(TypeError, match="per-token hooks must be methods of an object with state"):
        watch_of(Request(tokens=[1], index=3, on_token=lambda tree, seq, token: None))


def test_without_ray_installed_one_line(tmp_path):
    # Failure injection: a `ray` package that cannot be imported shadows the real one.
    shim = tmp_path / "shim" / "ray"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('no ray here')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shim.parent), os.environ.get("PYTHONPATH", "")]))
    r = eager_local([*EVAL, "--ray", "--out", str(tmp_path / "run")], env=env)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ['Error: Ray is not installed: pip install -e ".[ray]" (or pip install "ray>=2.9")']
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def test_actor_count_fits_actors_within_nodes():
    nodes = [{"Alive": True, "Resources": {"CPU": 3.0}}, {"Alive": True, "Resources": {"CPU": 1.0}},
             {"Alive": False, "Resources": {"CPU": 64.0}}, {"Alive": True, "Resources": {}}]
    assert actor_count(nodes, 1) == 4
    assert actor_count(nodes, 2) == 1  # 3 CPUs hold one 2-thread actor; 1 CPU holds none
    assert actor_count(nodes, 4) == 0


def test_a_node_with_another_model_file_is_refused_up_front(default_model_path, ray_address):
    """Each node checks its own file against the driver's sha256; the driver says which node, in one
    line, before any prompt runs. (One machine cannot hold two different files under one name, so
    the driver is handed a wrong hash instead.)"""
    import ray

    from eager_local import models
    from eager_local.cluster import ClusterError
    from eager_local.cluster.runner import RayRunner

    resolved = models.resolve(str(default_model_path))
    try:
        with pytest.raises(ClusterError, match=r"^node \S+: \S+ has sha256 \w{12}…, the driver's model has 000000000000…"):
            RayRunner(str(default_model_path), resolved, "0" * 64, address=ray_address, threads=1)
    finally:
        ray.shutdown()


def test_a_missing_model_on_a_node_is_its_error(tmp_path):
    from eager_local.cluster.worker import EvalWorker, WorkerError

    worker = EvalWorker(str(tmp_path / "absent.gguf"), "0" * 64, threads=1)  # the constructor never raises
    with pytest.raises(WorkerError, match=r"^node \S+: model file not found: .*absent\.gguf"):
        worker.where()
