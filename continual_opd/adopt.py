"""Adopt a user's local model, a Hugging Face folder or a GGUF file, as the first champion of a registered model.

The demo world's `bootstrap` pretrains its own base; a real user already has one (e.g. a 0.5B instruct model).
A folder is checked (safetensors, no unapproved remote code, a loadable tokenizer) and copied into the home; a
GGUF file is checked and converted once into a plain fp32 folder in the home (`continual_opd.gguf_import`,
cached by the file's sha256), its source file, sha256, quantization and architecture recorded as tags of the
version. Either way the folder is written atomically (the registry never points at a half-written folder) and
registered as `<name>@champion` when the model has no champion yet. The command line is
`continual-opd adopt FOLDER|FILE.gguf --name NAME`.
"""

import json
from pathlib import Path

from continual_opd import gguf_import, registry
from continual_opd.home import Home, current_home, file_lock, prepare_stores
from continual_opd.modelio import copy_model_folder_atomic, load_tokenizer, weights_digest
from continual_opd.records import ModelRef

ADOPT_EXPERIMENT = "adopted-models"
BASE_TAGS = {"role": "base", "parent_version": "none", "method": "adopted", "gate_decision": "adopted"}


def adopt_model(source: str | Path, model_name: str, home: Home | None = None, trust_remote_code: bool = False,
                make_champion: bool = True) -> ModelRef:
    """Register `source` (a model folder, or a GGUF file converted to one) as a version of `model_name`
    (idempotent on its weights, or on the GGUF file's bytes); champion if it has none."""
    if gguf_import.is_gguf_source(source):
        return _adopt_gguf(Path(source), model_name, home, make_champion)
    home = prepare_stores(home or current_home())
    folder = Path(source).resolve()
    load_tokenizer(folder, trust_remote_code)  # checks the folder too: a clear error before anything is copied
    digest = weights_digest(folder)
    with file_lock(home.locks / "bootstrap.lock"):
        dest = home.models / f"adopted-{folder.name}-{digest[:8]}"
        if not (dest / "config.json").is_file():
            copy_model_folder_atomic(folder, dest)
        return _register(dest, model_name, f"adopt:{digest}", {"made_by": f"continual-opd adopt from {folder}"},
                         f"Adopted from the local folder {folder}.", folder.name, trust_remote_code, make_champion)


def _adopt_gguf(path: Path, model_name: str, home: Home | None, make_champion: bool) -> ModelRef:
    info = gguf_import.inspect_gguf(path)  # the file's own checks, then transformers', before the home is touched
    home = home or current_home()
    cached = (home.models / gguf_import.converted_folder_name(info) / "config.json").is_file()
    tokenizer = None if cached else gguf_import.load_gguf_tokenizer(info)
    home = prepare_stores(home)
    with file_lock(home.locks / "bootstrap.lock"):
        dest = gguf_import.converted_folder(info, home.models, tokenizer)
        architectures = json.loads((dest / "config.json").read_text()).get("architectures") or [info.architecture]
        tags = {"made_by": f"continual-opd adopt from {info.path} (GGUF {info.quantization}, dequantized to fp32)",
                "source_format": "gguf", "source_file": str(info.path), "source_sha256": info.sha256,
                "gguf_quantization": info.quantization, "gguf_tensor_types": info.tensor_types_text(),
                "gguf_architecture": info.architecture, "architecture": ",".join(architectures)}
        return _register(dest, model_name, f"adopt:gguf:{info.sha256}", tags,
                         f"Adopted from the GGUF file {info.path} (sha256 {info.sha256}, {info.quantization}), "
                         "dequantized to an fp32 Hugging Face folder.", info.path.name, False, make_champion)


def _register(dest: Path, model_name: str, key: str, tags: dict[str, str], description: str, source_name: str,
              trust_remote_code: bool, make_champion: bool) -> ModelRef:
    """Register the adopted folder `dest` (idempotent on `key`); champion of `model_name` if it has none."""
    import mlflow

    with mlflow.start_run(experiment_id=registry.experiment_id(ADOPT_EXPERIMENT),
                          run_name=f"adopt-{source_name}") as run:
        version = registry.register_folder(dest, model_name, run.info.run_id, {**BASE_TAGS, **tags}, key,
                                           description=description, trust_remote_code=trust_remote_code)
    if make_champion and registry.CHAMPION not in registry.aliases(model_name):
        registry.client().set_registered_model_alias(model_name, registry.CHAMPION, version.version)
    return ModelRef(name=model_name, version=str(version.version), folder=str(registry.local_folder(version)))
