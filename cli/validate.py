"""`continual-opd validate FILE`: the data contract alone, for a batch's owner to check a file before sending it.

It reads the same settings as `run` (`--config`, `--set`), so a batch of a YAML-declared skill is checked
against that skill, with the update's contract settings and the gate's suite size. It moves nothing,
logs nothing and builds no Data Docs. The tokenizer is the home's champion's (of `student_model`); a home
without one is checked with the demo world's tokenizer, and the report says so.
"""

import os

from cli.outcome import EXIT_CONTRACT, EXIT_PROMOTED
from continual_opd import registry
from continual_opd.home import Home, current_home
from demo_world.tokenizer import build_tokenizer
from flows.params import load_params
from tasks.validate import check_batch, student_tokenizer

EXIT_PASS = EXIT_PROMOTED  # 0


def validate_command(path: str, config: str | None = None, overrides=(), home: Home | None = None,
                     tokenizer_folder: str | None = None, out=print) -> int:
    """Print the contract report for one file; 0 pass, 2 contract failure or unreadable file.

    `home` (default: the current one) supplies the ledger of accepted batches; `tokenizer_folder` replaces
    the champion's tokenizer. Raises `ParamsError` for settings that do not load (the caller prints it, exit 1).
    """
    params = load_params(path, config, list(overrides))
    home = home or current_home()
    folder = tokenizer_folder or champion_folder(home, params.student_model)
    if folder is None:
        out(f"note: the home {home.root} has no champion of {params.student_model} yet; checking with the demo "
            "world's tokenizer")
        tokenizer = build_tokenizer()
    else:
        tokenizer = student_tokenizer(folder)
    checked = check_batch(path, params.contract, params.catalogue(), params.evaluation.suite_size, tokenizer, home,
                          docs=False, stop_at_duplicate=False)
    out(checked.report.markdown(params.contract.max_examples))
    if checked.duplicate_of is not None:
        out(f"note: the same rows were already accepted on {checked.duplicate_of.get('accepted_at')} as "
            f"{checked.duplicate_of.get('file')}; an update would skip this batch")
    return EXIT_PASS if checked.report.success else EXIT_CONTRACT


def champion_folder(home: Home, model_name: str) -> str | None:
    """The champion's model folder in this home, or None when the home has no registry or no champion.

    A home that does not exist yet stays so: the registry is only opened when its store is there.
    """
    if os.environ.get("MLFLOW_TRACKING_URI", "").startswith("sqlite") and not home.mlflow_db.is_file():
        return None
    if home.root != current_home().root:
        return None  # the registry helpers read the current home's store
    try:
        return str(registry.local_folder(registry.version_by_alias(model_name, registry.CHAMPION)))
    except registry.RegistryError:
        return None
