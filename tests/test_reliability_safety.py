"""Safe defaults: weights load from safetensors only, remote code is off, secrets stay out of every record,
and the reliability tests' offline guard really refuses (and records) connections, in child processes too.

The authenticated MLflow recipe is docs/scale-out.md (tested by tests/test_postgres_stack.py, which also
checks that the server password appears in no param, tag, output or log).
"""

import ast
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import reliability as R

PRODUCT = ("continual_opd", "demo_world", "tasks", "gates", "flows", "data_contracts")


def _calls(name: str):
    """(file, line, ast.Call) for every call of `<something>.<name>(...)` in the product code."""
    for package in PRODUCT:
        for path in sorted((R.ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name:
                    yield path.relative_to(R.ROOT), node.lineno, node


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_model_weights_are_loaded_with_safetensors_only_and_never_unpickled():
    loaders = [(f, n, c) for f, n, c in _calls("from_pretrained")
               if isinstance(c.func.value, ast.Name) and not c.func.value.id.endswith(("Tokenizer", "Config"))]
    assert loaders, "the scan found no model loading at all: it is looking in the wrong place"
    for file, line, call in loaders:
        if _keyword(call, "gguf_file") is not None:  # a GGUF file alone in a folder of its own (gguf_import): the
            continue                                 # gguf package reads its tensors, nothing is unpickled
        flag = _keyword(call, "use_safetensors")
        assert isinstance(flag, ast.Constant) and flag.value is True, f"{file}:{line} may load pickled weights"
    for banned in ("load", "loads"):
        for file, line, call in _calls(banned):
            assert not (isinstance(call.func.value, ast.Name) and call.func.value.id in ("torch", "pickle")), \
                f"{file}:{line} unpickles"


class _Trap:
    """Unpickling this touches a file: proof that a pickled weights file was opened."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_weights_file_beside_safetensors_is_never_opened(base_folder, tmp_path):
    from continual_opd.modelio import load_model

    folder = tmp_path / "model"
    shutil.copytree(base_folder, folder)
    marker = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(marker)))
    model, _ = load_model(folder, device="cpu")
    assert model is not None and not marker.exists()


def _fields_named(model_cls, name: str, path: str = ""):
    """(dotted path, default) of every field called `name` in a pydantic config tree."""
    from pydantic import BaseModel

    for field, info in model_cls.model_fields.items():
        where = f"{path}{field}"
        if field == name:
            yield where, info.default
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _fields_named(annotation, name, where + ".")


def test_remote_code_is_off_in_every_config_model_file_and_call():
    from flows.nightly import NightlyParams
    from flows.params import UpdateParams

    found = [*_fields_named(UpdateParams, "trust_remote_code"), *_fields_named(NightlyParams, "trust_remote_code")]
    assert found, "no trust_remote_code setting found: the scan is broken"
    assert all(default is False for _, default in found), found

    def mentions(tree) -> list:
        if isinstance(tree, dict):
            return [v for k, v in tree.items() if k == "trust_remote_code"] + \
                [m for v in tree.values() for m in mentions(v)]
        return [m for v in tree for m in mentions(v)] if isinstance(tree, list) else []

    configs = sorted((R.ROOT / "configs").rglob("*.yaml"))
    assert configs
    for path in configs:
        assert all(v is False for v in mentions(yaml.safe_load(path.read_text()) or {})), path
    for file, line, call in _calls("from_pretrained"):
        flag = _keyword(call, "trust_remote_code")
        assert not (isinstance(flag, ast.Constant) and flag.value is True), f"{file}:{line} trusts remote code"


def test_a_folder_that_ships_code_is_refused_by_default(base_folder, tmp_path):
    import json

    from continual_opd.modelio import ModelFolderError, load_model

    folder = tmp_path / "remote"
    shutil.copytree(base_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "evil.Model"}}))
    (folder / "evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w')\n")
    with pytest.raises(ModelFolderError, match="remote code"):
        load_model(folder, device="cpu")
    assert not (tmp_path / "ran").exists()


@pytest.mark.slow
def test_no_secret_from_the_environment_reaches_logs_params_or_artifacts():
    """Every CLI process of the reliability tests runs with MLFLOW_TRACKING_PASSWORD and HF_TOKEN canaries."""
    home = R.shared_home()
    if not list((home / "processed").glob("*.jsonl")):  # this file runs alone: make one full update here
        batch = R.write_batch(home, "canary-add.jsonl", seed=303)
        proc = R.run(home, ["run", "--batch", str(batch), *R.tiny_args()], "canary-run", timeout=900)
        assert proc.popen.returncode == 0, proc.stderr[-3000:]
    files = [p for p in home.parent.rglob("*") if p.is_file()]
    searched = b"".join(p.read_bytes() for p in files)
    # the search does see what the runs recorded: MLflow params, Prefect logs, process output
    assert b"teacher.steps" in searched and b"Finished in state" in searched and b"PROMOTED" in searched
    for secret in (R.CANARY_PASSWORD, R.CANARY_TOKEN):
        leaks = [str(p) for p in files if secret.encode() in p.read_bytes()]
        assert leaks == [], f"{secret} leaked into {leaks}"
    assert R.network_attempts(home) == []


def test_the_offline_guard_refuses_and_records_in_children_too(tmp_path):
    """The guard behind every reliability subprocess; a refused attempt never leaves the machine (0.0.0.0)."""
    home = tmp_path / "home"
    child = "import socket\ntry:\n    socket.socket().connect(('0.0.0.0', 9))\nexcept OSError as e:\n" \
            "    print(type(e).__name__)\n"
    parent = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {child!r}])\n{child}"
    out = subprocess.run([sys.executable, "-c", parent], env=R.cli_env(home), capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split() == ["ConnectionRefusedError", "ConnectionRefusedError"], out
    attempts = R.network_attempts(home)
    assert len(attempts) == 2 and len({a.split()[0] for a in attempts}) == 2, attempts  # two processes
    loopback = "import socket\ns = socket.socket()\ntry:\n    s.connect(('127.0.0.1', 9))\nexcept OSError:\n    pass\n"
    subprocess.run([sys.executable, "-c", loopback], env=R.cli_env(home), timeout=120, check=True)
    assert len(R.network_attempts(home)) == 2, "loopback connections are allowed"
