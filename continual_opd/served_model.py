"""Every registered version is an MLflow Model: a pyfunc over its Hugging Face folder that completes prompts.

`mlflow.pyfunc.load_model("models:/continual-opd-student@champion").predict(["12+34="])` returns the completions
the forgetting suite would read (`continual_opd.decoding.greedy_complete`, chat templates through
`continual_opd.prompts`), and `mlflow models serve -m models:/continual-opd-student@champion` answers the same on
`/invocations`. A `max_new_tokens` parameter (default `ANSWER_TOKENS`) sets the completion length.

- The folder is the model's artifact `hf_model`, unchanged, so the stages keep loading it as a folder
  (`registry.local_folder`); versions registered before this (a bare folder under `model/`) still resolve.
- The model ships its own copy of this package (`code_paths`), so a serving environment needs only the pip
  requirements recorded with it, not continual-opd. They are given, not inferred: MLflow's inference loads the
  model again and missed torch (docs/library-notes.md).
- The signature comes from `predict`'s type hints (a list of prompts in, a list of completions out), and the
  input example is a prompt of the skill the version was made for. MLflow runs the example through the saved
  model before the version is registered (a failure shows as an MLflow warning).
"""

from collections.abc import Sequence
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from continual_opd.decoding import ANSWER_TOKENS, greedy_complete
from continual_opd.modelio import load_model

ARTIFACT = "hf_model"
MODEL_NAME = "model"  # the logged model's name in its run
DEFAULT_EXAMPLE = ("12+34=",)
CODE_FILE = Path(__file__).with_name("served_model_code.py")  # models from code: no pickled Python objects
# What the pyfunc imports at prediction time (besides MLflow itself, which MLflow adds).
REQUIREMENTS = ("torch", "transformers", "safetensors", "tokenizers", "jinja2")


def set_served_model() -> None:
    """Hand MLflow the pyfunc of a version being loaded; `served_model_code`, the file MLflow runs, calls this."""
    import mlflow.models

    mlflow.models.set_model(_model_class()())


@cache
def _model_class():
    """The pyfunc class, built on first use: it subclasses MLflow's `PythonModel`, and importing MLflow costs
    seconds that the command line should not pay."""
    import mlflow.pyfunc

    class Completions(mlflow.pyfunc.PythonModel):
        """Greedy completions of a list of prompts by the Hugging Face folder in the model's artifacts."""

        def load_context(self, context):
            trust = bool((context.model_config or {}).get("trust_remote_code", False))
            self.model, self.tokenizer = load_model(context.artifacts[ARTIFACT], trust_remote_code=trust)

        def predict(self, context, model_input: list[str], params: dict[str, Any] | None = None) -> list[str]:
            max_new_tokens = int((params or {}).get("max_new_tokens", ANSWER_TOKENS))
            return greedy_complete(self.model, self.tokenizer, list(model_input), max_new_tokens=max_new_tokens)

    return Completions


def pip_requirements() -> list[str]:
    """The installed versions of what prediction imports (a local build tag such as `+cpu` dropped)."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in REQUIREMENTS]


def log_served_model(folder: str | Path, run_id: str, example_prompts: Sequence[str] = DEFAULT_EXAMPLE,
                     trust_remote_code: bool = False):
    """Log `folder` to `run_id` as a pyfunc MLflow Model; returns MLflow's `ModelInfo` (`model_uri`, `model_id`)."""
    import mlflow.pyfunc
    from mlflow.models import Model

    return Model.log(
        artifact_path=None, name=MODEL_NAME, flavor=mlflow.pyfunc, run_id=run_id, python_model=str(CODE_FILE),
        artifacts={ARTIFACT: str(folder)}, code_paths=[str(Path(__file__).parent)],
        input_example=(list(example_prompts), {"max_new_tokens": ANSWER_TOKENS}),
        pip_requirements=pip_requirements(), model_config={"trust_remote_code": trust_remote_code},
    )


def hf_folder(model_dir: str | Path) -> Path:
    """The Hugging Face folder inside a downloaded version: the `hf_model` artifact of an MLflow Model, or the
    downloaded folder itself for a version registered as a bare folder."""
    model_dir = Path(model_dir)
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        return model_dir
    flavor = yaml.safe_load(mlmodel.read_text()).get("flavors", {}).get("python_function", {})
    artifact = flavor.get("artifacts", {}).get(ARTIFACT, {})
    if not artifact.get("path"):
        raise ValueError(f"{model_dir} is an MLflow Model without a {ARTIFACT!r} artifact: not one of continual-opd's")
    return model_dir / artifact["path"]
