"""Shared machinery of the reliability tests: homes, tiny budgets, CLI subprocesses, kills, registry reads.

The reliability tests drive the real CLI in subprocesses (as an operator or a scheduler would), each with
its own `CONTINUAL_OPD_HOME`, so that SIGKILL, concurrent processes and the environment are real.
Budgets are tiny: these tests check the machinery (locks, caches, idempotent registration, atomic
folders, the audit trail), not learning.
"""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAUSE_CLI = Path(__file__).with_name("pause_cli.py")
PERMISSIVE_POLICY = Path(__file__).with_name("permissive_policy.yaml")
OFFLINE_GUARD = Path(__file__).with_name("offline")
STUDENT = "continual-opd-student"
TEACHER = "continual-opd-teacher"
CANARY_PASSWORD = "s3cr3t-canary-7f3a"
CANARY_TOKEN = "hf_canaryTOKEN0123456789abcdef"

# Every stage runs for real on a few prompts; the permissive policy promotes whatever comes out. The teacher's
# learning rate is so small that its answers cannot change: it never beats the initial model on the selection
# items, so the initial weights are kept and pass the teacher gate at margin 0 (16 noisy held-out items could
# otherwise fail it by chance and end the update with exit 4 before a kill point). The warm-start and cold-target
# rules stay out of the way: the warm start is off (it would change the teacher), the cold target keeps a tiny budget.
TINY = [
    "teacher.steps=4", "teacher.eval_every=2", "teacher.eval_items=16", "teacher.gate_items=16",
    "teacher.prompts_per_step=8", "teacher.num_generations=2", "teacher.gate_margin=0", "teacher.learning_rate=1e-12",
    "teacher.warm_start.below=0",  # the teacher must not change (see above): no warm start either
    "distill.steps=6", "distill.checkpoint_every=2", "distill.eval_every=3", "distill.eval_items=16",
    "distill.prompts_per_step=16", "distill.cold_target.settings.steps=6",
    "evaluation.suite_size=40", "evaluation.bootstrap_resamples=200",
    "evaluation.kl_prompts=16",
    f"gate.policy={PERMISSIVE_POLICY}",
]


def tiny_args(*extra: str) -> list[str]:
    return [a for o in (*TINY, *extra) for a in ("--set", o)]


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI process on `home`: the caller's, minus anything that points at other stores."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "PREFECT_HOME", "PREFECT_API_URL", "PYTEST_CURRENT_TEST")}
    env.update(CONTINUAL_OPD_HOME=str(home), OMP_NUM_THREADS="1", PYTHONPATH=f"{OFFLINE_GUARD}:{ROOT}",
               RELIABILITY_NET_LOG=str(net_log(home)), MLFLOW_TRACKING_PASSWORD=CANARY_PASSWORD,
               HF_TOKEN=CANARY_TOKEN, **extra)
    return env


def net_log(home: Path) -> Path:
    """Where the offline guard of `home`'s processes records refused connections (see offline/sitecustomize.py)."""
    return home.parent / f"{home.name}.net.log"


def network_attempts(home: Path) -> list[str]:
    path = net_log(home)
    return path.read_text().splitlines() if path.is_file() else []


@dataclass
class Proc:
    popen: subprocess.Popen
    out: Path
    err: Path

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(self)
            raise

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")


def start(home: Path, argv: list[str], log_name: str, pause_at: str | None = None, env: dict | None = None) -> Proc:
    """Start `continual-opd ARGV` on `home` in its own process group (so a kill takes its Prefect API too).

    `env` adds to `cli_env(home)`: the servers' URLs for a process that plays a worker of a shared stack.
    """
    logs = home.parent / "logs"
    logs.mkdir(exist_ok=True)
    out, err = logs / f"{log_name}.out", logs / f"{log_name}.err"
    if pause_at:
        cmd = [sys.executable, str(PAUSE_CLI), pause_at, *argv]
        environment = cli_env(home, RELIABILITY_MARKER=str(marker(home)), **(env or {}))
        marker(home).unlink(missing_ok=True)
    else:
        cmd, environment = [sys.executable, "-m", "cli", *argv], cli_env(home, **(env or {}))
    with open(out, "w") as o, open(err, "w") as e:
        popen = subprocess.Popen(cmd, cwd=home.parent, env=environment, stdout=o, stderr=e,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    return Proc(popen, out, err)


def run(home: Path, argv: list[str], log_name: str, timeout: float = 600, env: dict | None = None) -> Proc:
    proc = start(home, argv, log_name, env=env)
    proc.wait(timeout)
    return proc


def marker(home: Path) -> Path:
    return home.parent / f"{home.name}.paused"


def kill_group(proc: Proc) -> None:
    """SIGKILL the process and everything it started (its ephemeral Prefect API server)."""
    try:
        os.killpg(proc.popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.popen.wait(timeout=60)


def run_and_kill_at(home: Path, argv: list[str], point: str, timeout: float = 600) -> Proc:
    """Run until the process reaches `point`, then SIGKILL it; fail if it ends or stalls before that."""
    proc = start(home, argv, f"kill-{point}", pause_at=point)
    deadline = time.monotonic() + timeout
    while not (marker(home).is_file() and marker(home).read_text() == point):
        if proc.popen.poll() is not None:
            raise AssertionError(f"the update exited ({proc.popen.returncode}) before reaching {point}:\n"
                                 f"{proc.stderr[-4000:]}")
        if time.monotonic() > deadline:
            kill_group(proc)
            raise AssertionError(f"the update did not reach {point} in {timeout:.0f} s:\n{proc.stderr[-4000:]}")
        time.sleep(0.2)
    kill_group(proc)
    assert proc.popen.returncode == -signal.SIGKILL
    return proc


def bootstrapped_home(root: Path) -> Path:
    """A fresh home with migrated stores and the demo base registered as champion v1 (through the CLI)."""
    home = root / "home"
    proc = run(home, ["bootstrap"], "bootstrap", timeout=900)
    assert proc.popen.returncode == 0, proc.stderr[-4000:]
    return home


def write_batch(home: Path, name: str, seed: int, rows: int = 64, skill: str = "add") -> Path:
    sys.path.insert(0, str(ROOT))
    from demo_world.skills import CATALOGUE
    from continual_opd.batch_io import write_jsonl

    return write_jsonl(CATALOGUE[skill].items("train", rows, seed=seed), home / "inbox" / name)


# ---- reading a home's MLflow store directly (the test process's MLflow points at another home) ----

def query(home: Path, sql: str, args: tuple = ()) -> list[tuple]:
    with sqlite3.connect(f"file:{home / 'mlflow.db'}?mode=ro", uri=True, timeout=30) as db:
        return db.execute(sql, args).fetchall()


def aliases(home: Path, model: str = STUDENT) -> dict[str, str]:
    return {a: str(v) for a, v in query(home, "select alias, version from registered_model_aliases where name=?",
                                        (model,))}


def versions(home: Path, model: str = STUDENT) -> list[dict]:
    """Every version of `model` with its tags, oldest first."""
    rows = query(home, "select version, source from model_versions where name=? order by version", (model,))
    out = []
    for version, source in rows:
        tags = dict(query(home, "select key, value from model_version_tags where name=? and version=?",
                          (model, version)))
        out.append({"version": str(version), "source": source, "tags": tags})
    return out


def gate_runs(home: Path) -> list[dict]:
    """The audit trail: runs of the `gate-decisions` experiment with their tags, oldest first."""
    rows = query(home, "select r.run_uuid, r.status, r.start_time, r.end_time from runs r join experiments e on "
                       "r.experiment_id = e.experiment_id where e.name = 'gate-decisions' order by r.start_time")
    return [{"run_id": rid, "status": status, "start": start, "end": end,
             "tags": dict(query(home, "select key, value from tags where run_uuid=?", (rid,)))}
            for rid, status, start, end in rows]


def update_runs(home: Path, batch: Path) -> list[dict]:
    """The MLflow runs of the updates of `batch` (experiment `continual-updates`), oldest first."""
    rows = query(home, "select r.run_uuid, r.status from runs r join tags t on t.run_uuid = r.run_uuid "
                       "and t.key = 'batch' and t.value = ? order by r.start_time", (str(batch),))
    return [{"run_id": rid, "status": status,
             "tags": dict(query(home, "select key, value from tags where run_uuid=?", (rid,)))}
            for rid, status in rows]


def assert_registry_invariants(home: Path) -> None:
    """What must hold after any crash: a blessed champion, one version per piece of work, no temp folders."""
    students = versions(home)
    champion = aliases(home).get("champion")
    assert champion is not None, "the champion alias was lost"
    blessed = {v["version"]: v["tags"].get("gate_decision") for v in students}
    assert blessed[champion] in ("promoted", "bootstrap"), \
        f"champion v{champion} is {blessed[champion] or 'undecided'}, not a blessed version: {blessed}"
    for model in (STUDENT, TEACHER):
        keys = [v["tags"].get("registration_key") for v in versions(home, model)]
        assert len(keys) == len(set(keys)), f"{model}: one piece of work registered twice: {keys}"
        for v in versions(home, model):
            folder = v["tags"].get("model_folder", "")
            assert ".tmp-" not in folder, f"{model} v{v['version']} registers a temporary folder {folder}"
            assert Path(folder, "config.json").is_file() and list(Path(folder).glob("*.safetensors")), folder


_SHARED: dict[str, Path] = {}


def shared_home() -> Path:
    """One bootstrapped home for every reliability test in this pytest process (bootstrapping costs ~15 s)."""
    if "home" not in _SHARED:
        import atexit
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="continual-opd-reliability-"))
        if not os.environ.get("RELIABILITY_KEEP_HOME"):  # set it to keep the home and the CLI logs for a look
            atexit.register(shutil.rmtree, root, ignore_errors=True)
        _SHARED["home"] = bootstrapped_home(root)
    return _SHARED["home"]
