"""Progress of long work (pretraining, the teacher's RL, distillation, evaluation), shown where a person looks.

- On a terminal (stdout is a TTY): one live bar per stage (tqdm), with step and total, the key metrics
  (held-out accuracy, KL, reward, loss), elapsed time and ETA.
- Anywhere else (CI, a worker's log, a file): the same text as a plain line every `PLAIN_EVERY_SECONDS` and
  once at the end, with no control characters.
- Inside a Prefect flow or task run, also a progress artifact (`create_progress_artifact`), updated as the work
  moves (at most every `ARTIFACT_EVERY_SECONDS`: each update is an API call), so the run's page in the Prefect
  UI shows how far the stage is. Progress is a view: an artifact that cannot be written never stops the work.
  Prefect is imported only there, so code outside Prefect (pretraining, the benchmark) does not load it.

`total` is the most steps the work may take; work that stops early (early stopping) ends below it.
"""

import logging
import re
import shutil
import sys
import time
from collections.abc import Mapping

from tqdm import tqdm

PLAIN_EVERY_SECONDS = 15.0
ARTIFACT_EVERY_SECONDS = 2.0
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"
LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}{postfix}]"

log = logging.getLogger(__name__)


class Progress:
    """Progress of one piece of work of `total` steps; a context manager (closes itself, even on an error).

    `update(step, metrics)` moves it to `step` (absolute), `advance(n, metrics)` by `n`; `metrics` (name ->
    number) are shown beside it, in the order given and before older ones, until new values replace them. `stream` defaults to stdout; `bar` forces
    (True) or forbids (False) the live bar, by default it is used when the stream is a terminal.
    """

    def __init__(self, title: str, total: int, *, stream=None, bar: bool | None = None,
                 plain_every: float = PLAIN_EVERY_SECONDS, artifact_every: float = ARTIFACT_EVERY_SECONDS):
        self.title, self.total = title, max(int(total), 1)
        self.stream = stream or sys.stdout
        self.plain_every, self.artifact_every = plain_every, artifact_every
        self.step, self.metrics = 0, {}
        self.started = time.monotonic()
        self._last_line = self._last_artifact = self.started
        self._closed = False
        use_bar = bar if bar is not None else _is_terminal(self.stream)
        self._bar = _tqdm(title, self.total, self.stream) if use_bar else None
        self._artifact = _create_artifact(title)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(finished=exc_type is None)

    def advance(self, n: int = 1, metrics: Mapping[str, float] | None = None) -> None:
        self.update(self.step + n, metrics)

    def update(self, step: int, metrics: Mapping[str, float] | None = None) -> None:
        if self._closed:
            return
        metrics = dict(metrics or {})
        self.metrics = {**metrics, **{k: v for k, v in self.metrics.items() if k not in metrics}}  # newest first
        step = min(step, self.total)
        moved, self.step = step - self.step, step
        now = time.monotonic()
        if self._bar is not None:
            self._bar.set_postfix_str(self.metrics_text(), refresh=False)
            self._bar.update(moved)
        elif now - self._last_line >= self.plain_every:
            self._write_line(now)
        if self._artifact is not None and now - self._last_artifact >= self.artifact_every:
            self._update_artifact(now)

    def close(self, finished: bool = True) -> None:
        """End the display: the bar's last state stays on screen; a plain stream gets a last line."""
        if self._closed:
            return
        self._closed = True
        now = time.monotonic()
        if self._bar is not None:
            self._bar.set_postfix_str(self.metrics_text(), refresh=False)
            self._bar.close()
        else:
            self._write_line(now)
        if self._artifact is not None:
            self._update_artifact(now, done=finished)

    def metrics_text(self) -> str:
        return " ".join(f"{name} {_number(value)}" for name, value in self.metrics.items())

    def line(self, now: float | None = None) -> str:
        """The progress as one plain line (what a non-terminal stream gets)."""
        elapsed = (now or time.monotonic()) - self.started
        postfix = self.metrics_text()
        return tqdm.format_meter(self.step, self.total, elapsed, prefix=self.title, bar_format=LINE_FORMAT,
                                 postfix=postfix or None)

    def _write_line(self, now: float) -> None:
        self._last_line = now
        print(self.line(now), file=self.stream, flush=True)

    def _update_artifact(self, now: float, done: bool = False) -> None:
        from prefect.artifacts import update_progress_artifact

        self._last_artifact = now
        percent = 100.0 if done else 100.0 * self.step / self.total
        try:
            update_progress_artifact(self._artifact, progress=percent, description=self.line(now))
        except Exception as exc:  # noqa: BLE001 - a view of the work must never stop it
            log.warning("progress artifact of %s not updated (%s); going on without it", self.title, exc)
            self._artifact = None


def _number(value: float) -> str:
    if not isinstance(value, float):
        return str(value)
    return f"{value:.3f}" if value == 0 or abs(value) >= 0.01 else f"{value:.1e}"  # a KL of 1e-4 is not 0.000


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False


def _tqdm(title: str, total: int, stream):
    # The size is asked once, with a fallback: a pseudo-terminal that reports 0 x 0 (`script`, `docker run -t`)
    # made tqdm compute -1 rows and draw nothing at all.
    size = shutil.get_terminal_size()
    return tqdm(total=total, desc=title, file=stream, bar_format=BAR_FORMAT, ncols=size.columns, nrows=size.lines,
                leave=True, mininterval=0.5)


def artifact_key(title: str) -> str:
    """A Prefect artifact key for `title`: lowercase letters, digits and dashes only."""
    return "progress-" + (re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "work")


def _create_artifact(title: str):
    """The id of a new progress artifact when this runs inside a Prefect flow or task run, else None."""
    from prefect.context import FlowRunContext, TaskRunContext

    if TaskRunContext.get() is None and FlowRunContext.get() is None:
        return None
    from prefect.artifacts import create_progress_artifact

    try:
        return create_progress_artifact(0.0, key=artifact_key(title), description=f"{title}: starting")
    except Exception as exc:  # noqa: BLE001 - a view of the work must never stop it
        log.warning("progress artifact of %s not created (%s); going on without it", title, exc)
        return None


def trainer_callback(title: str, heldout=(), logs: Mapping[str, str] | None = None):
    """A `transformers.TrainerCallback` that shows a trainer's steps as `Progress(title, max_steps)`.

    Beside the step: the latest held-out accuracies of the `heldout` callbacks (their `latest` dict, as
    `continual_opd.training.heldout_callback` keeps it), and the trainer logs named in `logs` (log name ->
    label, e.g. `{"reward": "reward"}`).
    """
    from transformers import TrainerCallback

    shown_logs = dict(logs or {})

    class ShowProgress(TrainerCallback):
        def __init__(self):
            self.progress: Progress | None = None
            self.shown: dict[str, float] = {}

        def on_train_begin(self, args, state, control, **kwargs):
            self.progress = Progress(title, state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            self.shown.update({label: logs[name] for name, label in shown_logs.items() if name in logs})

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                accuracies = {name: acc for callback in heldout for name, acc in callback.latest.items()}
                self.progress.update(state.global_step, {**self.shown, **accuracies})  # a narrow bar keeps the first

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.close()

    return ShowProgress()
