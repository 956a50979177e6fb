"""`python tests/helpers/pause_cli.py POINT run ...`: the real CLI, stopped dead at one named point.

The crash tests need to kill an update at a precise moment (mid-teacher, mid-distillation, mid-evaluation,
between the gate's alias moves) without any seam in product code. This wrapper patches a few functions
in *this* process only, then runs `cli.main.main`. When execution reaches POINT it writes the
point's name to `$RELIABILITY_MARKER` and sleeps; the test sees the marker and SIGKILLs the whole process
group (the update and its ephemeral Prefect API), as a power cut would. With POINT `none` it is the CLI.

Points:
- `teacher-save`:    the teacher's final folder is fully written to its temporary sibling, not yet renamed;
- `distill-step`:    distillation has taken DISTILL_STEP steps (past a resumable checkpoint);
- `candidate-save`:  the candidate's folder is fully written to its temporary sibling, not yet renamed;
- `evaluate`:        both models answered every suite item; drift is being measured;
- `gate-between`:    the gate set `previous-champion`, and is about to move `champion`;
- `gate-after`:      the gate moved `champion`; the decision is not yet recorded.
"""

import os
import sys
import time
from pathlib import Path

DISTILL_STEP = 4


def pause(point: str) -> None:
    marker = Path(os.environ["RELIABILITY_MARKER"])
    marker.write_text(point)
    while True:  # wait for the SIGKILL
        time.sleep(60)


def install(point: str) -> None:
    if point == "none":
        return
    if point in ("teacher-save", "candidate-save"):
        prefix = ".teacher-" if point == "teacher-save" else ".candidate-"
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if Path(src).name.startswith(prefix) and ".tmp-" in Path(src).name:
                pause(point)
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace
    elif point == "distill-step":
        from transformers.trainer_callback import CallbackHandler

        real_step_end = CallbackHandler.on_step_end

        def on_step_end(self, args, state, control, **kwargs):
            out = real_step_end(self, args, state, control, **kwargs)
            if "/distill-" in str(args.output_dir) and state.global_step >= DISTILL_STEP:
                pause(point)
            return out

        CallbackHandler.on_step_end = on_step_end
    elif point == "evaluate":
        import tasks.evaluate

        tasks.evaluate.kl_drift = lambda *args, **kwargs: pause(point)
    elif point in ("gate-between", "gate-after"):
        from mlflow import MlflowClient

        real_set_alias = MlflowClient.set_registered_model_alias

        def set_alias(self, name, alias, version):
            if alias == "champion" and point == "gate-between":
                pause(point)
            out = real_set_alias(self, name, alias, version)
            if alias == "champion" and point == "gate-after":
                pause(point)
            return out

        MlflowClient.set_registered_model_alias = set_alias
    else:
        raise SystemExit(f"unknown pause point {point!r}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    install(sys.argv[1])
    from cli.main import main

    sys.exit(main(sys.argv[2:]))
