"""A fingerprint of the code that trains: what makes a rerun after a code fix train anew instead of reusing.

A registered teacher or candidate is found again by its registration key, and Prefect reuses a finished stage by
its cache key. Both include `training_code(modules)`: a digest of the syntax trees of the modules that train
(comments, docstrings and layout do not count, so editing them keeps every key) and of the versions of the
libraries that train (torch, transformers, trl, peft, accelerate). A fix to the trainer changes the digest, so the
same batch trains a new candidate rather than reusing the one the old code made.
"""

import ast
import hashlib
import importlib
import importlib.metadata
import inspect
from collections.abc import Sequence
from functools import lru_cache

TRAINING_LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate")


def code_fingerprint(source: str) -> bytes:
    """The code of a module without its comments, docstrings and layout (its syntax tree, dumped)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree).encode()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


@lru_cache(maxsize=16)
def training_code(modules: Sequence[str]) -> str:
    """A 16-hex digest of `modules`' code (by import name) and of the training libraries' versions."""
    digest = hashlib.sha256()
    for name in modules:
        digest.update(name.encode() + b"\0" + code_fingerprint(inspect.getsource(importlib.import_module(name))))
    for dist in TRAINING_LIBRARIES:
        digest.update(f"{dist}=={_version(dist)}\0".encode())
    return digest.hexdigest()[:16]
