"""The forgetting suite on real demo models: paired items, statistics, MLflow metrics and artifact, drift KL,
the accuracy matrix (GEM ACC/BWT)."""

import json
import math
import uuid

import numpy as np
import pytest
from scipy import stats as sps

from continual_opd import accuracy_matrix, registry
from continual_opd.records import Candidate, ModelRef
from continual_opd.suites import build_suites, suite_names
from demo_world.skills import CATALOGUE
from tasks.evaluate import EvalConfig, evaluate, kl_drift, sample_from_champion, token_kl
from tests.helpers.threads import TORCH_THREADS

CFG = EvalConfig(suite_size=60, bootstrap_resamples=2000, kl_prompts=48, batch_size=128)


def register(name, folder, key, tags=None) -> str:
    client = registry.client()
    run = client.create_run(registry.experiment_id("evaluate-tests"))
    version = registry.register_folder(folder, name, run.info.run_id, tags or {}, key)
    client.set_terminated(run.info.run_id)
    return str(version.version)


@pytest.fixture(scope="module")
def perturbed_folder(base_folder, tmp_path_factory):
    """The base with noise on its weights: a candidate that differs a little (a stand-in for an update)."""
    import torch

    from continual_opd.modelio import load_model, save_model_atomic

    model, tok = load_model(base_folder, device="cpu")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3 * p.abs().mean())
    return save_model_atomic(model, tok, tmp_path_factory.mktemp("perturbed") / "model")


@pytest.fixture(scope="module")
def setup(home, base_folder, perturbed_folder):
    name = f"eval-test-{uuid.uuid4().hex[:8]}"
    v1 = register(name, base_folder, "v1", {"gate_decision": "bootstrap"})
    v2 = register(name, perturbed_folder, "v2", {"method": "perturbed"})
    champion = ModelRef(name=name, version=v1, folder=str(base_folder))
    candidate = Candidate(model=ModelRef(name=name, version=v2, folder=str(perturbed_folder)), method="perturbed",
                          parent_version=v1, teacher_version="")
    return name, champion, candidate


@pytest.fixture(scope="module")
def report(setup, home, torch_threads_module):
    name, champion, candidate = setup
    return evaluate(champion, candidate, "add", CFG, CATALOGUE, home)


@pytest.fixture(scope="module")
def torch_threads_module():
    import torch

    torch.set_num_threads(TORCH_THREADS)


def read_items(path):
    return [json.loads(line) for line in open(path)]


def test_champion_and_candidate_answer_the_same_suite_items(report):
    rows = read_items(report.items_path)
    names = suite_names(CATALOGUE, "add")
    assert list(report.suites) == names and report.target_skill == "add"
    expected = build_suites(CATALOGUE, names, CFG.suite_size)
    for name in names:
        got = [r for r in rows if r["suite"] == name]
        assert [(r["item_id"], r["prompt"], r["expected"]) for r in got] == \
            [(it.id, it.prompt, it.answer) for it in expected[name]]
    for r in rows:
        assert set(r) >= {"suite", "item_id", "prompt", "expected", "champion_output", "candidate_output",
                          "champion_correct", "candidate_correct"}
        assert r["champion_correct"] == (r["champion_output"] == r["expected"])
        assert r["candidate_correct"] == (r["candidate_output"] == r["expected"])
        assert r["candidate_lenient_correct"] >= r["candidate_correct"]


def test_statistics_match_independent_computations_from_the_items(report):
    rows = read_items(report.items_path)
    for name, s in report.suites.items():
        champ = np.array([r["champion_correct"] for r in rows if r["suite"] == name])
        cand = np.array([r["candidate_correct"] for r in rows if r["suite"] == name])
        assert s.n == len(champ) == CFG.suite_size
        assert s.champion_acc == pytest.approx(champ.mean()) and s.candidate_acc == pytest.approx(cand.mean())
        assert s.delta == pytest.approx(cand.mean() - champ.mean())
        down, up = int(np.sum(champ & ~cand)), int(np.sum(cand & ~champ))
        p = 1.0 if down + up == 0 else sps.binomtest(down, down + up, 0.5).pvalue
        assert s.mcnemar_p == pytest.approx(p)
        if down + up:
            ref = sps.bootstrap((champ.astype(float), cand.astype(float)),
                                lambda a, b, axis: b.mean(axis=axis) - a.mean(axis=axis), paired=True,
                                vectorized=True, n_resamples=20_000, method="percentile",
                                rng=np.random.default_rng(0)).confidence_interval
            assert s.delta_ci_low == pytest.approx(ref.low, abs=0.02)
            assert s.delta_ci_high == pytest.approx(ref.high, abs=0.02)
        else:
            assert s.delta_ci_low == s.delta_ci_high == 0.0
    # The perturbation changed some answers (so the comparison above is not vacuous).
    assert any(r["champion_output"] != r["candidate_output"] for r in rows)


def test_metrics_and_items_artifact_are_logged_to_mlflow(report):
    import mlflow

    client = registry.client()
    run = client.get_run(report.run_id)
    for name, s in report.suites.items():
        for key in ("champion_acc", "candidate_acc", "delta", "delta_ci_low", "delta_ci_high", "mcnemar_p"):
            assert run.data.metrics[f"{name}/{key}"] == pytest.approx(getattr(s, key))
    assert run.data.metrics["drift/kl_core"] == pytest.approx(report.kl_core)
    logged = mlflow.artifacts.load_text(f"runs:/{report.run_id}/gate/items.jsonl")
    assert logged == open(report.items_path).read()


def test_drift_kl_is_zero_for_the_champion_itself_and_positive_for_a_changed_model(base_folder, perturbed_folder):
    from continual_opd.modelio import load_model

    base, tok = load_model(base_folder, device="cpu")
    other, other_tok = load_model(perturbed_folder, device="cpu")
    prompts = [it.prompt for it in build_suites(CATALOGUE, ["reverse", "refuse"], 20)["reverse"]]
    assert kl_drift(base, tok, base, tok, prompts, 8, seed=0) == pytest.approx(0.0, abs=1e-6)
    kl = kl_drift(base, tok, other, other_tok, prompts, 8, seed=0)
    assert kl > 1e-4
    assert kl == kl_drift(base, tok, other, other_tok, prompts, 8, seed=0)  # seeded


def test_drift_kl_handles_left_padding_like_unpadded_sequences(base_folder, perturbed_folder):
    """Recompute every row alone, without padding, and compare with the batched KL at each kept token."""
    import torch

    from continual_opd.modelio import load_model

    base, tok = load_model(base_folder, device="cpu")
    other, _ = load_model(perturbed_folder, device="cpu")
    suites = build_suites(CATALOGUE, ["copy", "reverse", "refuse"], 6)
    prompts = [it.prompt for s in suites.values() for it in s]  # prompts of different lengths: padding happens
    (batch,) = sample_from_champion(base, tok, prompts, 8, seed=1, batch_size=64)
    assert (batch["attention"][:, : batch["width"]] == 0).any()
    batched = token_kl(base, other, batch)
    for i in range(len(prompts)):
        real = batch["attention"][i].bool()
        ids = batch["seq"][i][real].unsqueeze(0)
        n_prompt = int(batch["attention"][i, : batch["width"]].sum())
        with torch.no_grad():
            logp = torch.log_softmax(base(input_ids=ids).logits[0, n_prompt - 1:-1], -1)
            logq = torch.log_softmax(other(input_ids=ids).logits[0, n_prompt - 1:-1], -1)
        alone = (logp.exp() * (logp - logq)).sum(-1)
        kept = batched[i][batch["keep"][i]]
        assert kept.shape == alone.shape
        assert torch.allclose(kept, alone, atol=1e-4), (prompts[i], kept, alone)


def test_the_accuracy_matrix_gets_both_versions_and_taught_skills_are_evaluated(setup, report, home):
    name, champion, candidate = setup
    cells = accuracy_matrix.load(home, name)["accuracy"]
    assert cells[champion.version] == {s: st.champion_acc for s, st in report.suites.items()}
    assert cells[candidate.model.version] == {s: st.candidate_acc for s, st in report.suites.items()}
    # Once an update taught `sub`, later updates (of another skill) evaluate `sub` too, so forgetting it shows.
    accuracy_matrix.append_row(home, name, champion.version, "baseline")
    accuracy_matrix.append_row(home, name, candidate.model.version, "promoted", "sub")
    later = evaluate(champion, candidate, "add", CFG.model_copy(update={"kl_prompts": 0}), CATALOGUE, home)
    assert list(later.suites) == [*suite_names(CATALOGUE, "add"), "sub"] and math.isnan(later.kl_core)


def test_a_target_must_be_a_target_skill(setup, home):
    name, champion, candidate = setup
    with pytest.raises(ValueError, match="'copy' is a core skill"):
        evaluate(champion, candidate, "copy", CFG, CATALOGUE, home)
    with pytest.raises(KeyError, match="unknown skill"):
        evaluate(champion, candidate, "division", CFG, CATALOGUE, home)


def test_gem_acc_and_bwt_by_hand():
    model = {
        "rows": [{"version": "1", "event": "baseline", "target_skill": ""},
                 {"version": "2", "event": "promoted", "target_skill": "add"},
                 {"version": "3", "event": "promoted", "target_skill": "sub"}],
        "accuracy": {"1": {"add": 0.35, "copy": 1.0, "reverse": 0.99},
                     "2": {"add": 0.95, "copy": 0.99, "reverse": 0.99, "sub": 0.2},
                     "3": {"add": 0.90, "copy": 0.97, "reverse": 0.98, "sub": 0.85}},
    }
    gem = accuracy_matrix.gem_metrics(model)
    # ACC over learned tasks (copy, reverse learned at row 0, add at row 1, sub at row 2) in the last row.
    assert gem["ACC"] == pytest.approx((0.90 + 0.97 + 0.98 + 0.85) / 4)
    # BWT over tasks learned before the last row: add (0.90-0.95), copy (0.97-1.0), reverse (0.98-0.99).
    assert gem["BWT"] == pytest.approx(((0.90 - 0.95) + (0.97 - 1.0) + (0.98 - 0.99)) / 3)
    table = accuracy_matrix.render_markdown("m", model)
    assert "| 2 | v3 | promoted | sub | 90.0 | 85.0 | 97.0 | 98.0 |" in table  # add, sub, copy, reverse
    assert "BWT -3.0 points" in table
    assert accuracy_matrix.gem_metrics({"rows": [], "accuracy": {}}) == {"ACC": None, "BWT": None}
    # A target measured but never taught (mul, 0.0 everywhere) counts in neither, once its role is recorded.
    for cells in model["accuracy"].values():
        cells["mul"] = 0.0
    model["roles"] = {"add": "target", "sub": "target", "mul": "target", "copy": "core", "reverse": "core"}
    assert accuracy_matrix.gem_metrics(model) == gem
    assert accuracy_matrix.columns(model) == ["add", "mul", "sub", "copy", "reverse"]  # targets first, as measured
