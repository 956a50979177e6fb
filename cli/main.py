"""`continual-opd`: the command line over the flow, the registry and the local stack.

Exit codes of `run` and `demo`: 0 promoted, 1 error, 2 data contract failed, 3 rejected by the gate,
4 teacher gate failed, 5 skipped (the batch was already trained on). `validate`: 0 pass, 2 fail.
"""

import argparse
import sys

from cli.demo import run_demo
from cli.outcome import EXIT_ERROR
from cli.run import run_update
from cli.stack import mlflow_ui, serve
from cli.validate import validate_command
from cli.verbosity import configure_output
from continual_opd import registry
from continual_opd.adopt import adopt_model
from continual_opd.home import HomeError
from continual_opd.modelio import ModelFolderError
from demo_world.bootstrap import bootstrap
from flows.params import ParamsError, load_params
from gates.promotion import RollbackRefused, rollback
from gates.views import history_text, status_text

EXAMPLES = {
    "demo": "continual-opd demo\n  continual-opd demo --skill sub --config configs/smoke.yaml",
    "run": "continual-opd run --batch data/add.jsonl\n"
           "  continual-opd run --batch data/add.jsonl --config configs/smoke.yaml --set teacher.steps=200",
    "validate": "continual-opd validate data/add.jsonl\n"
                "  continual-opd validate data/gsm8k.jsonl --config configs/real-models.yaml",
    "bootstrap": "continual-opd bootstrap\n  continual-opd bootstrap --force --seed 1",
    "adopt": "continual-opd adopt /models/Qwen2.5-0.5B-Instruct --name qwen-student\n"
             "  continual-opd adopt /models/SmolLM2-135M-Instruct.Q4_1.gguf --name smol-student",
    "status": "continual-opd status",
    "history": "continual-opd history",
    "rollback": 'continual-opd rollback --to 3 --reason "regression seen in prod"',
    "serve": "continual-opd serve",
    "mlflow-ui": "continual-opd mlflow-ui --port 5001",
}


UPDATE_EXIT_CODES = ("\n\nexit codes: 0 promoted, 1 error, 2 data contract failed, 3 rejected by the gate, "
                     "4 teacher gate failed,\n  5 skipped (the batch was already trained on)")
EXIT_CODES = {"run": UPDATE_EXIT_CODES, "demo": UPDATE_EXIT_CODES,
              "validate": "\n\nexit codes: 0 pass, 1 error, 2 contract failed or file unreadable"}


def _settings_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of update parameters (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one parameter, e.g. --set teacher.steps=200 (repeatable)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="continual-opd", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n  " + "\n  ".join(e.splitlines()[0] for e in EXAMPLES.values()))
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help_text, description=help_text,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"example:\n  {EXAMPLES[name]}" + EXIT_CODES.get(name, ""))
        parser.add_argument("-v", "--verbose", action="store_true",
                            help="also show the libraries' logs, progress bars and warnings")
        return parser

    demo = command("demo", "bootstrap the demo world if needed, drop a demo batch, run one update")
    demo.add_argument("--skill", default="add", help="target skill of the demo batch (add, sub, mul)")
    demo.add_argument("--rows", type=int, default=2048, help="rows in the demo batch")
    _settings_arguments(demo)

    run = command("run", "run one continual update on a batch file")
    run.add_argument("--batch", required=True, help="batch file (.jsonl or .parquet)")
    _settings_arguments(run)

    val = command("validate", "run the data contract alone, with the update's settings: exit 0 pass, 2 fail")
    val.add_argument("file", help="batch file (.jsonl or .parquet)")
    _settings_arguments(val)

    boot = command("bootstrap", "pretrain and register the demo-world base as champion")
    boot.add_argument("--force", action="store_true", help="register a fresh base even if a champion exists")
    boot.add_argument("--seed", type=int, default=0, help="seed of the base's pretraining")

    adopt = command("adopt", "register a local Hugging Face model folder or GGUF file; champion of NAME if it has "
                             "none")
    adopt.add_argument("source", metavar="FOLDER|FILE.gguf",
                       help="local model folder (safetensors weights and a tokenizer), or a GGUF file with its "
                            "tokenizer (converted once to an fp32 folder in the home; needs `make install-real`)")
    adopt.add_argument("--name", required=True, help="registered model name (use it as student_model)")
    adopt.add_argument("--trust-remote-code", action="store_true", help="allow folders that ship code (review it)")

    command("status", "champion, previous champion, candidates, last decisions")
    command("history", "the decision log and the accuracy matrix")
    rb = command("rollback", "move champion back to an earlier blessed version")
    rb.add_argument("--to", required=True, dest="to_version", help="the version to make champion again")
    rb.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
    rb.add_argument("--force", action="store_true", help="allow a version that was never blessed")

    command("serve", "start a local Prefect server and a worker, deploy prefect.yaml")
    ui = command("mlflow-ui", "start the MLflow UI on the home's store (127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000, help="port of the UI")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_output(verbose=args.verbose)
    try:
        return COMMANDS[args.command](args)
    except (HomeError, ParamsError, ModelFolderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def cmd_run(args) -> int:
    return run_update(load_params(args.batch, args.config, args.overrides))


def cmd_demo(args) -> int:
    return run_demo(args.skill, args.rows, args.config, args.overrides)


def cmd_validate(args) -> int:
    return validate_command(args.file, args.config, args.overrides)


def cmd_bootstrap(args) -> int:
    ref = bootstrap(seed=args.seed, force=args.force)
    print(f"champion: {ref.name} v{ref.version} ({ref.folder})")
    return 0


def cmd_adopt(args) -> int:
    ref = adopt_model(args.source, args.name, trust_remote_code=args.trust_remote_code)
    champion = registry.aliases(args.name).get(registry.CHAMPION)
    print(f"{ref.name} v{ref.version} registered from {args.source} (folder {ref.folder}); "
          f"{ref.name}@champion is v{champion}")
    return 0


def cmd_status(args) -> int:
    print(status_text())
    return 0


def cmd_history(args) -> int:
    print(history_text())
    return 0


def cmd_rollback(args) -> int:
    try:
        result = rollback(args.to_version, args.reason, force=args.force)
    except (RollbackRefused, registry.RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"champion -> v{result.candidate_version} (was v{result.champion_version}); recorded in gate-decisions "
          f"run {result.audit_run_id}")
    for reason in result.reasons:
        print(f"  - {reason}")
    return 0


def cmd_serve(args) -> int:
    return serve()


def cmd_mlflow_ui(args) -> int:
    return mlflow_ui(args.port)


COMMANDS = {
    "demo": cmd_demo, "run": cmd_run, "validate": cmd_validate, "bootstrap": cmd_bootstrap, "adopt": cmd_adopt,
    "status": cmd_status, "history": cmd_history, "rollback": cmd_rollback, "serve": cmd_serve,
    "mlflow-ui": cmd_mlflow_ui,
}

if __name__ == "__main__":
    sys.exit(main())
