"""Bootstrap the demo world: pretrain a base and register it as the first `champion`.

The base is a pure function of its recipe, so the pretrained folder is cached per machine under
`$CONTINUAL_OPD_CACHE` (default `~/.cache/continual-opd`), keyed by a digest of what the base is made
from (`recipe_key`): a second home, a test session or CI on the same machine reuses it instead of
pretraining for minutes again, and any change that could change the weights makes a new base. Registration
is per home and idempotent: bootstrapping a home that
already has a champion is a no-op unless forced.
"""

import hashlib
import inspect
import json
import os
import textwrap
from dataclasses import asdict
from pathlib import Path

from continual_opd import registry
from continual_opd.fingerprint import code_fingerprint
from continual_opd.home import Home, current_home, file_lock, prepare_stores
from continual_opd.modelio import copy_model_folder_atomic, save_model_atomic
from continual_opd.records import ModelRef
from demo_world.model import build_tiny_model, tiny_llama_config
from demo_world.pretrain import PretrainConfig, encode_examples, pretrain, recipe_data
from demo_world.skills import SKILLS
from demo_world.tokenizer import build_tokenizer

BOOTSTRAP_EXPERIMENT = "bootstrap"


def recipe_key(cfg: PretrainConfig) -> str:
    """A digest of what the base is made from: the recipe's settings, the tokenizer's vocabulary, the model's
    config, every item the recipe draws (train pools and early-stopping sets), and the code that builds and
    trains the model (its syntax tree: comments, docstrings and layout do not count). Edits that cannot change
    the weights (documentation, other skills' code) keep the key, so they do not cost every machine a
    re-pretraining; telling which *code* changes leave the weights alone is not something a digest can do."""
    tokenizer = build_tokenizer()
    model_config = {k: v for k, v in tiny_llama_config(tokenizer).to_dict().items() if k != "transformers_version"}
    pools, eval_sets = recipe_data(cfg)
    parts = [asdict(cfg), sorted(tokenizer.get_vocab().items()), model_config,
             {sid: [[it.prompt, it.answer] for it in items] for sid, items in {**pools, **{
                 f"eval:{k}": v for k, v in eval_sets.items()}}.items()},
             *(code_fingerprint(textwrap.dedent(inspect.getsource(f))).decode()
               for f in (pretrain, encode_examples, build_tiny_model))]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("CONTINUAL_OPD_CACHE", "~/.cache/continual-opd")).expanduser()


def pretrained_base(cfg: PretrainConfig, log=print) -> tuple[Path, dict]:
    """The pretrained base folder for this recipe and seed, pretraining it only on a cache miss."""
    import torch

    key = recipe_key(cfg)
    folder = cache_root() / "bases" / f"base-{key}"
    report_path = folder / "pretrain_report.json"
    with file_lock(cache_root() / "locks" / f"base-{key}.lock"):
        if report_path.is_file():
            log(f"bootstrap: reusing the pretrained base {folder} (recipe {key})")
            return folder, json.loads(report_path.read_text())
        log(f"bootstrap: pretraining the demo base (seed {cfg.seed}); this takes a few minutes once per machine")
        torch.manual_seed(cfg.seed)
        tokenizer = build_tokenizer()
        model = build_tiny_model(tokenizer, seed=cfg.seed)
        report = pretrain(model, tokenizer, cfg, log=log)
        report = {**report, "recipe_key": key, "config": asdict(cfg),
                  "parameters": sum(p.numel() for p in model.parameters())}
        save_model_atomic(model, tokenizer, folder, extra_files={"pretrain_report.json": json.dumps(report)})
    return folder, report


def bootstrap(home: Home | None = None, seed: int = 0, model_name: str = registry.STUDENT_MODEL,
              force: bool = False, log=print) -> ModelRef:
    """Make sure `model_name@champion` exists in this home; returns it."""
    import mlflow

    home = prepare_stores(home or current_home())
    with file_lock(home.locks / "bootstrap.lock"):
        current = registry.aliases(model_name).get(registry.CHAMPION)
        if current is not None and not force:
            version = registry.get_version(model_name, current)
            log(f"bootstrap: {model_name} already has champion v{current}; nothing to do (use --force to redo)")
            return ModelRef(name=model_name, version=str(version.version), folder=str(registry.local_folder(version)))
        cfg = PretrainConfig(seed=seed)
        cached, report = pretrained_base(cfg, log=log)
        dest = home.models / f"base-seed{seed}-{report['recipe_key']}"
        if not (dest / "config.json").is_file():
            copy_model_folder_atomic(cached, dest)
        client = registry.client()
        exp = registry.experiment_id(BOOTSTRAP_EXPERIMENT)
        with mlflow.start_run(experiment_id=exp, run_name=f"bootstrap-seed{seed}") as run:
            mlflow.log_params({"seed": seed, "recipe_key": report["recipe_key"], "steps": report["steps"],
                               "parameters": report["parameters"], **{f"pretrain.{k}": v for k, v in
                                                                       report["config"].items()}})
            for point in report["curve"]:
                mlflow.log_metrics({f"pretrain/{k}": v for k, v in point.items() if k != "step"}, step=point["step"])
            mlflow.log_metrics({f"base/{k}_acc": v for k, v in report["accuracy"].items()})
            tags = {
                "role": "base",
                "made_by": "demo_world.bootstrap: pretrained from scratch on the demo skills, early-stopped",
                "seed": str(seed),
                "recipe_key": report["recipe_key"],
                "parent_version": "none",
                "method": "pretrain",
                "gate_decision": "bootstrap",
                **{f"acc.{k}": f"{v:.3f}" for k, v in report["accuracy"].items()},
            }
            key = f"bootstrap:{report['recipe_key']}:{'forced:' + run.info.run_id if force else 'first'}"
            version = registry.register_folder(dest, model_name, run.info.run_id, tags, key,
                                               description="Demo-world base pretrained by continual-opd bootstrap.")
        if current is not None and current != version.version:
            client.set_registered_model_alias(model_name, registry.PREVIOUS_CHAMPION, current)
        client.set_registered_model_alias(model_name, registry.CHAMPION, version.version)
        log(f"bootstrap: registered {model_name} v{version.version} as champion "
            + " ".join(f"{k}={v:.2f}" for k, v in report["accuracy"].items()))
        return ModelRef(name=model_name, version=str(version.version), folder=str(dest))


def base_summary(report: dict) -> dict[str, float]:
    return {k: report["accuracy"][k] for k in SKILLS if k in report["accuracy"]}
