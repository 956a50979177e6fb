"""What the terminal shows besides continual-opd's own lines: quiet by default, the libraries' chatter with --verbose.

Quiet: the libraries' progress bars and info logs are off by default for the whole package
(`continual_opd.home.OFFLINE_AND_QUIET`: transformers' `Loading weights` / `Writing model shards` bars,
MLflow's info lines), and here the deprecation and user warnings that third-party code raises are hidden.
Warnings raised by continual-opd's own modules still show: their causes are ours to fix.

`--verbose` turns all of it back on: the environment settings are overridden before the libraries read them
(the command line imports none of them before it runs a command), and libraries already imported are told too.
"""

import logging
import os
import sys
import warnings

FIRST_PARTY = r"(cli|flows|tasks|gates|demo_world|data_contracts|continual_opd)(\.|$)"
HIDDEN_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, UserWarning)
VERBOSE_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "0",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "0",
    "TRANSFORMERS_VERBOSITY": "info",
    "MLFLOW_LOGGING_LEVEL": "INFO",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "true",
}


def configure_output(verbose: bool = False) -> None:
    """Quiet (the default) or verbose library output for this process."""
    if verbose:
        _verbose()
        return
    for category in HIDDEN_CATEGORIES:
        warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=category, module=FIRST_PARTY)  # checked first


def _verbose() -> None:
    os.environ.update(VERBOSE_ENV)
    warnings.simplefilter("default")
    logging.getLogger("mlflow").setLevel(logging.INFO)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_info()
        hf_logging.enable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import enable_progress_bars

        enable_progress_bars()
