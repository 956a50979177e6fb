"""Progress of long stages: a live bar on a terminal, plain periodic lines elsewhere, a Prefect progress
artifact inside a flow or task run, and the trainer callback that feeds it from a training loop."""

import io
import re
from types import SimpleNamespace

from continual_opd.progress import Progress, artifact_key, trainer_callback


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_plain_stream_gets_plain_lines_with_step_total_metrics_elapsed_and_eta():
    out = io.StringIO()
    with Progress("teacher-rl", 10, stream=out, plain_every=0) as progress:
        progress.update(3, {"add": 0.5, "reward": 0.25})
        progress.update(6, {"add": 0.75})
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue(), "no control characters off a terminal"
    assert len(lines) == 3, lines  # two updates and the last line
    assert re.fullmatch(r"teacher-rl: 3/10 \(30%\) \[\d\d:\d\d<[^,]+, add 0\.500 reward 0\.250\]", lines[0]), lines[0]
    assert lines[1].startswith("teacher-rl: 6/10 (60%)") and "add 0.750 reward 0.250" in lines[1]
    assert lines[2].startswith("teacher-rl: 6/10 (60%)"), "work that stopped early ends below its total"


def test_plain_lines_are_periodic_not_per_step():
    out = io.StringIO()
    with Progress("distill", 1000, stream=out, plain_every=3600) as progress:
        for step in range(1, 1001):
            progress.update(step, {"kl": 0.1})
    lines = out.getvalue().splitlines()
    assert lines == [lines[-1]] and lines[-1].startswith("distill: 1000/1000 (100%)"), lines


def test_a_terminal_gets_a_live_bar():
    out = Terminal()
    with Progress("pretrain", 4, stream=out) as progress:
        for step in range(1, 5):
            progress.update(step, {"loss": 1.0 / step})
    text = out.getvalue()
    assert "\r" in text, "a bar redraws itself in place"
    last = text.split("\r")[-1]
    assert "pretrain: 100%|" in last and "4/4" in last and "loss 0.250" in last, last


def test_steps_past_the_total_are_clamped_and_closing_twice_is_harmless():
    out = io.StringIO()
    progress = Progress("evaluate", 5, stream=out, plain_every=0)
    progress.advance(3)
    progress.advance(4)
    assert progress.step == 5
    progress.close()
    progress.close()
    progress.update(1)
    assert len(out.getvalue().splitlines()) == 3


def test_artifact_keys_are_what_prefect_accepts():
    assert artifact_key("Teacher RL (add)") == "progress-teacher-rl-add"
    assert re.fullmatch(r"[a-z0-9-]+", artifact_key("évaluer / ÉTAPE 2"))


def test_outside_a_prefect_run_there_is_no_artifact():
    assert Progress("pretrain", 3, stream=io.StringIO())._artifact is None


def test_inside_a_flow_run_a_progress_artifact_moves_with_the_work(home):
    from prefect import flow, task
    from prefect.client.orchestration import get_client

    def artifact_progress(artifact_id) -> float:
        with get_client(sync_client=True) as client:
            return client.request("GET", "/artifacts/{id}", path_params={"id": artifact_id}).json()["data"]

    @task
    def work() -> list:
        seen = []
        with Progress("unit work", 4, stream=io.StringIO(), artifact_every=0) as progress:
            assert progress._artifact is not None
            seen.append(artifact_progress(progress._artifact))
            progress.update(1)
            seen.append(artifact_progress(progress._artifact))
            progress.update(3)
            seen.append(artifact_progress(progress._artifact))
        seen.append(artifact_progress(progress._artifact))
        return seen

    @flow
    def progress_flow() -> list:
        return work()

    assert progress_flow() == [0.0, 25.0, 75.0, 100.0]


def test_the_trainer_callback_shows_steps_heldout_accuracy_and_chosen_logs(capsys):
    heldout = SimpleNamespace(latest={"add": 0.5})
    callback = trainer_callback("teacher-rl", [heldout], {"reward": "reward"})
    state = SimpleNamespace(max_steps=10, global_step=0)
    callback.on_train_begin(None, state, None)
    callback.progress.plain_every = 0
    state.global_step = 1
    callback.on_log(None, state, None, logs={"reward": 0.25, "loss": 9.0})
    callback.on_step_end(None, state, None)
    heldout.latest = {"add": 0.75}
    state.global_step = 2
    callback.on_step_end(None, state, None)
    callback.on_train_end(None, state, None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("teacher-rl: 1/10 (10%)") and "reward 0.250 add 0.500" in lines[0], lines
    assert "loss" not in lines[0], "only the logs asked for are shown"
    assert lines[-1].startswith("teacher-rl: 2/10 (20%)") and "reward 0.250 add 0.750" in lines[-1], lines
