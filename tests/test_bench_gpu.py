"""`make bench-gpu` (bench/gpu.py): refuses to run without CUDA, and its CPU smoke mode runs every part.

The smoke run exercises the machinery that a GPU run uses (the world, the three stages, the precision check,
the step timing, the report) at tiny sizes, so the GPU run is ready whenever a GPU is available. Its numbers
mean nothing, except one the CPU can show: bf16 weights barely move at lr 1e-6, the stage's fp32 weights do.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_it_refuses_to_run_without_cuda_and_names_the_smoke_flag(monkeypatch, capsys, tmp_path):
    import torch

    from bench import gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main(["--out", str(tmp_path)]) == 2
    assert "--cpu-smoke" in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "nothing is written"


@pytest.mark.slow
@pytest.mark.long
def test_the_cpu_smoke_run_goes_through_every_part(tmp_path):
    env = {**os.environ, "CONTINUAL_OPD_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "bench.gpu", "--cpu-smoke", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "gpu-cpu-smoke.json").read_text())
    parts = results["parts"]
    assert results["smoke"] and not [name for name, part in parts.items() if "error" in part]
    assert parts["vllm"]["skipped"], "no vLLM without CUDA"
    assert parts["bf16"]["changed_fraction"] < 0.05 < 0.9 < parts["distill"]["changed_fraction"]
    for shape in ("steps-short", "steps-long"):
        split = parts[shape]["routed_split"]
        assert parts[shape]["routed_over_stock"] > 0 and split["tokens_sampled"] > 0, shape
    assert parts["steps-long"]["routed_split"]["tokens_sampled"] == 8 * 16, "full-length completions"
    assert set(parts["distill"]["forgetting_suite"]["suites"]) >= {"add", "copy", "reverse", "upper"}
    report = (out / "gpu-cpu-smoke.md").read_text()
    for heading in ("## Precision check", "## Step time", "## The stages on this device", "## What the GPU run"):
        assert heading in report, heading
