"""Loading and saving model folders safely.

A model folder is an ordinary Hugging Face folder (config, safetensors weights, tokenizer). It is
written to a temporary sibling and renamed into place only when complete, so a crash never leaves a
half-written folder that could be registered. Loading refuses pickled weights and remote code, and
gives a model the dtype its role needs (`continual_opd.compute`): fp32 weights for a model that is trained,
bf16 for a frozen one on a GPU under bf16-mixed precision.
"""

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from continual_opd.compute import Precision, weights_dtype


class ModelFolderError(ValueError):
    """A model folder is missing, incomplete or unsafe to load."""


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_model_folder(folder: str | Path, trust_remote_code: bool = False) -> Path:
    """Say clearly what is wrong with a model folder before anything heavy touches it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {folder} does not exist or is not a folder")
    config = folder / "config.json"
    if not config.is_file():
        raise ModelFolderError(f"model folder {folder} has no config.json: is it a Hugging Face model folder?")
    try:
        cfg = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"model folder {folder}: config.json is unreadable ({exc})") from exc
    if cfg.get("auto_map") and not trust_remote_code:
        raise ModelFolderError(
            f"model folder {folder} needs remote code (auto_map in config.json); it is off by default. "
            "Review the code, then set trust_remote_code: true in the config to allow it."
        )
    if not any(folder.glob("*.safetensors")):
        pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        hint = f" (found {', '.join(pickled)}: convert them to safetensors)" if pickled else ""
        raise ModelFolderError(f"model folder {folder} has no .safetensors weights{hint}; only safetensors are loaded")
    return folder


def load_tokenizer(folder: str | Path, trust_remote_code: bool = False):
    """The tokenizer of a checked local model folder (no weights loaded), padding on the left for generation.

    The one tokenizer loader of the project: local files only, remote code off unless asked for.
    """
    from transformers import AutoTokenizer

    folder = check_model_folder(folder, trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelFolderError(f"model folder {folder}: its tokenizer could not be loaded ({exc})") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(folder: str | Path, trust_remote_code: bool = False, device: str | None = None, dtype=None, *,
               frozen: bool = False, precision: Precision = "auto"):
    """Load (model, tokenizer) from a local folder: safetensors only, remote code off unless asked for.

    The weights' dtype follows the model's role: `frozen=False` (a model that will be trained, or saved after
    training) loads fp32 master weights; `frozen=True` (teachers scoring, the anchor, evaluation) loads bf16 on
    a GPU when `precision` resolves to bf16-mixed. An explicit `dtype` overrides both.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    folder = check_model_folder(folder, trust_remote_code)
    device = device or pick_device()
    if dtype is None:
        dtype = weights_dtype(precision, device, frozen=frozen)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, use_safetensors=True, trust_remote_code=trust_remote_code, dtype=dtype, local_files_only=True
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:  # a torn .safetensors raises the last
        raise ModelFolderError(f"model folder {folder} could not be loaded: {exc}") from exc
    return model.to(device), load_tokenizer(folder, trust_remote_code)


@contextlib.contextmanager
def _published(dest: Path):
    """Yield a temporary sibling of `dest`; on success fsync its files and rename it to `dest` in one step."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        for path in tmp.iterdir():  # make the bytes durable before the rename publishes them
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_model_atomic(model, tokenizer, dest: str | Path, extra_files: dict[str, str] | None = None) -> Path:
    """Write model + tokenizer to `dest` via a temporary sibling folder and one rename."""
    dest = Path(dest)
    with _published(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return dest


def copy_model_folder_atomic(src: str | Path, dest: str | Path) -> Path:
    """Copy a finished model folder to `dest` the same way: never a half-copied folder at `dest`."""
    dest = Path(dest)
    with _published(dest) as tmp:
        shutil.copytree(src, tmp)
    return dest


def weights_digest(folder: str | Path) -> str:
    """sha256 of a folder's safetensors files (names and bytes): a folder whose weights change is a new model."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.safetensors")):
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]
