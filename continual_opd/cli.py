"""`continual-opd`: the command line over the flow, the registry and the local stack.

Exit codes of `run` and `demo` (DESIGN.md): 0 promoted, 1 error, 2 data contract failed, 3 rejected by
the gate, 4 teacher gate failed. Imports are deferred to the command that needs them, so `--help`
answers at once.
"""

import argparse
import sys

EXIT_PROMOTED, EXIT_ERROR, EXIT_CONTRACT, EXIT_REJECTED, EXIT_TEACHER_GATE = 0, 1, 2, 3, 4


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="continual-opd", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="bootstrap the demo world if needed, drop a demo batch, run one update")
    demo.add_argument("--skill", default="add", help="target skill of the demo batch (add, sub, mul)")
    demo.add_argument("--rows", type=int, default=2048, help="rows in the demo batch")
    demo.add_argument("--config", help="YAML file of update parameters")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    run = sub.add_parser("run", help="run one continual update on a batch file")
    run.add_argument("--batch", required=True, help="batch file (.jsonl or .parquet)")
    run.add_argument("--config", help="YAML file of update parameters (see configs/)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override one parameter, e.g. --set teacher.steps=200 (repeatable)")

    val = sub.add_parser("validate", help="run the data contract alone: exit 0 pass, 2 fail")
    val.add_argument("file")

    boot = sub.add_parser("bootstrap", help="pretrain and register the demo-world base as champion")
    boot.add_argument("--force", action="store_true", help="register a fresh base even if a champion exists")
    boot.add_argument("--seed", type=int, default=0)

    sub.add_parser("status", help="champion, previous champion, candidates, last decisions")
    sub.add_parser("history", help="the decision log and the accuracy matrix")
    rb = sub.add_parser("rollback", help="move champion back to an earlier blessed version")
    rb.add_argument("--to", required=True, dest="to_version")
    rb.add_argument("--reason", required=True)
    rb.add_argument("--force", action="store_true", help="allow a version that was never blessed")

    sub.add_parser("serve", help="start a local Prefect server and a worker, deploy prefect.yaml")
    ui = sub.add_parser("mlflow-ui", help="start the MLflow UI on the home's store (127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from continual_opd.home import HomeError

    try:
        return COMMANDS[args.command](args)
    except HomeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def cmd_run(args) -> int:
    from flows.params import ParamsError, load_params

    try:
        params = load_params(args.batch, args.config, args.overrides)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return run_update(params)


def run_update(params) -> int:
    """Run the flow in this process and turn its outcome into an exit code and a readable summary."""
    from continual_opd.summary import print_outcome

    return print_outcome(params, *run_flow(params))


def run_flow(params):
    """Run the flow in this process; returns its final state and its result (an exception when it failed)."""
    from continual_opd.home import current_home
    from flows.continual_update import continual_update

    # Before Prefect starts its API with its database in the home: an unwritable home would otherwise cost a
    # 2-minute start-up timeout and a page of traceback instead of this HomeError (main prints it, exit 1).
    current_home().ensure()

    state = continual_update(params, return_state=True)
    return state, state.result(raise_on_failure=False)


def cmd_demo(args) -> int:
    from continual_opd.demo import run_demo

    return run_demo(args.skill, args.rows, args.config, args.overrides)


def cmd_validate(args) -> int:
    from tasks.validate import validate_command

    return validate_command(args.file)


def cmd_bootstrap(args) -> int:
    from demo_world.bootstrap import bootstrap

    ref = bootstrap(seed=args.seed, force=args.force)
    print(f"champion: {ref.name} v{ref.version} ({ref.folder})")
    return 0


def cmd_status(args) -> int:
    from gates.promotion import status_text

    print(status_text())
    return 0


def cmd_history(args) -> int:
    from gates.promotion import history_text

    print(history_text())
    return 0


def cmd_rollback(args) -> int:
    from continual_opd.registry import RegistryError
    from gates.promotion import RollbackRefused, rollback

    try:
        result = rollback(args.to_version, args.reason, force=args.force)
    except (RollbackRefused, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"champion -> v{result.candidate_version} (was v{result.champion_version}); recorded in gate-decisions "
          f"run {result.audit_run_id}")
    for reason in result.reasons:
        print(f"  - {reason}")
    return 0


def cmd_serve(args) -> int:
    from continual_opd.stack import serve

    return serve()


def cmd_mlflow_ui(args) -> int:
    from continual_opd.stack import mlflow_ui

    return mlflow_ui(args.port)


COMMANDS = {
    "demo": cmd_demo, "run": cmd_run, "validate": cmd_validate, "bootstrap": cmd_bootstrap, "status": cmd_status,
    "history": cmd_history, "rollback": cmd_rollback, "serve": cmd_serve, "mlflow-ui": cmd_mlflow_ui,
}

if __name__ == "__main__":
    sys.exit(main())
