"""The forgetting suite: champion and candidate on identical held-out items, paired, plus label-free drift.

For every suite (the target skill, every core skill, and the targets taught by earlier promoted
updates) both models answer the same items with batched greedy decoding (`greedy_complete`, the one way
the project reads answers). Each item gets a strict score (exact match) and a lenient one (case and
whitespace ignored), so a format slip can be told apart from lost knowledge. Per suite: accuracies, the
paired delta with its 95% bootstrap CI and McNemar's exact p (gates.stats). `drift/kl_core` is the mean
per-token KL(champion || candidate) on completions the champion samples for core prompts: it needs no
labels and, on the demo world, tracked forgetting better than accuracy on the new task: <= 0.05 came
with no accuracy loss, >= 0.13 with drops of 15 points or more.

Everything goes to one MLflow run (metrics under the shared names, the per-item `gate/items.jsonl`),
and the measured accuracies fill the accuracy matrix in the registry (continual_opd.accuracy_matrix).
"""

import json
import math
import os
import uuid
from pathlib import Path

from pydantic import Field

from continual_opd import accuracy_matrix
from continual_opd.compat import check_same_tokenizer
from continual_opd.compute import DEFAULT_COMPUTE, ComputeConfig
from continual_opd.config import StrictConfig
from continual_opd.decoding import greedy_complete
from continual_opd.home import Home
from continual_opd.modelio import load_model
from continual_opd.progress import Progress
from continual_opd.prompts import add_special_tokens, as_text
from continual_opd.records import Candidate, EvalReport, ModelRef, SuiteStats
from continual_opd.skills import Catalogue, Item
from continual_opd.stats import paired_stats
from continual_opd.suites import DEFAULT_SUITE_SIZE, build_suites, suite_names
from continual_opd.tracking import stage_run

ITEMS_ARTIFACT = "gate/items.jsonl"


class EvalConfig(StrictConfig):
    suite_size: int = Field(default=DEFAULT_SUITE_SIZE, ge=20,
                            description="Held-out items per suite; sized so noise cannot fail the default margins.")
    seed: int = Field(default=0, description="Seed of the bootstrap and of the champion's samples for drift/kl_core.")
    bootstrap_resamples: int = Field(default=10_000, ge=100, description="Paired bootstrap resamples per suite.")
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0, description="Confidence level of the delta intervals.")
    kl_prompts: int = Field(default=512, ge=0, description="Core prompts sampled from the champion for drift/kl_core.")
    max_new_tokens: int = Field(default=8, ge=1, description="Completion length for answers and drift samples.")
    batch_size: int = Field(default=512, ge=1, description="Prompts per generation batch.")


def evaluate(champion: ModelRef | None, candidate: Candidate, target_skill: str, cfg: EvalConfig,
             catalogue: Catalogue, home: Home, parent_run_id: str | None = None, *,
             compute: ComputeConfig = DEFAULT_COMPUTE) -> EvalReport:
    """Evaluate champion and candidate on the same suites; with no champion, the candidate alone (NaN deltas).

    Both models are frozen here: in bf16 on a GPU under bf16-mixed precision (`compute`), fp32 elsewhere.
    """
    import mlflow

    skill = catalogue[target_skill]
    if skill.role != "target":
        raise ValueError(f"{target_skill!r} is a {skill.role} skill; an update's target must be one of the "
                         "target skills")
    names = suite_names(catalogue, target_skill, accuracy_matrix.taught_skills(home, candidate.model.name))
    suites = build_suites(catalogue, names, cfg.suite_size)
    cand = load_model(candidate.model.folder, frozen=True, precision=compute.precision)
    champ = load_model(champion.folder, frozen=True, precision=compute.precision) if champion is not None else None
    rows, stats, kl_core = compare(champ, cand, suites, catalogue, cfg)

    champ_version = champion.version if champion is not None else ""
    out_dir = home.root / "evaluations" / (f"{candidate.model.name}-v{candidate.model.version}-vs-"
                                           f"{'v' + champ_version if champ_version else 'none'}-{cfg.config_hash()}")
    items_path = _write_jsonl_atomic(out_dir / "items.jsonl", rows)

    tags = {"candidate_version": candidate.model.version, "champion_version": champ_version,
            "target_skill": target_skill, "method": candidate.method, "student_model": candidate.model.name}
    with stage_run("evaluate", parent_run_id, tags=tags) as run:
        mlflow.log_params({"suite_size": cfg.suite_size, "suites": ",".join(names), "seed": cfg.seed,
                           "bootstrap_resamples": cfg.bootstrap_resamples, "confidence": cfg.confidence,
                           "kl_prompts": cfg.kl_prompts, "max_new_tokens": cfg.max_new_tokens})
        report = EvalReport(champion_version=champ_version, candidate_version=candidate.model.version,
                            suites=stats, kl_core=kl_core, items_path=str(items_path), run_id=run.info.run_id,
                            target_skill=target_skill)
        mlflow.log_metrics({k: v for k, v in report.metrics().items() if math.isfinite(v)})
        mlflow.log_artifact(str(items_path), artifact_path=os.path.dirname(ITEMS_ARTIFACT))

    roles = {s: catalogue[s].role for s in stats}
    accuracy_matrix.record_accuracy(home, candidate.model.name, candidate.model.version,
                                    {s: st.candidate_acc for s, st in stats.items()}, roles)
    if champion is not None:
        accuracy_matrix.record_accuracy(home, champion.name, champion.version,
                                        {s: st.champion_acc for s, st in stats.items()}, roles)
    return report


def compare(champion, candidate, suites: dict[str, list[Item]], catalogue: Catalogue, cfg: EvalConfig,
            title: str = "evaluate") -> tuple[list[dict], dict[str, SuiteStats], float]:
    """Champion and candidate, each a loaded (model, tokenizer), on the same suites: per-item rows, per-suite paired
    statistics and `drift/kl_core`. With no champion (None), the candidate alone (NaN deltas and drift)."""
    names = list(suites)
    items = [it for suite in names for it in suites[suite]]
    prompts = [it.prompt for it in items]
    kl_prompts = cfg.kl_prompts if champion is not None else 0
    with Progress(title, len(prompts) * (1 if champion is None else 2) + kl_prompts) as progress:
        cand_model, cand_tok = candidate
        cand_out = _complete(cand_model, cand_tok, prompts, cfg, progress)
        cand_correct = _correct(items, cand_out, catalogue)
        progress.advance(0, {"candidate": sum(cand_correct) / len(items)})
        if champion is not None:
            champ_model, champ_tok = champion
            champ_out = _complete(champ_model, champ_tok, prompts, cfg, progress)
            champ_correct = _correct(items, champ_out, catalogue)
            progress.advance(0, {"champion": sum(champ_correct) / len(items)})
        else:
            champ_model = champ_tok = champ_out = champ_correct = None

        kl_core = math.nan
        if kl_prompts > 0:
            core_prompts = _interleave([[it.prompt for it in suites[s]] for s in names
                                        if catalogue[s].role == "core"], kl_prompts)
            kl_core = kl_drift(champ_model, champ_tok, cand_model, cand_tok, core_prompts, cfg.max_new_tokens,
                               cfg.seed, cfg.batch_size)
            progress.advance(kl_prompts, {"kl_core": kl_core})

    rows = []
    for i, it in enumerate(items):
        verifier = catalogue[it.skill]
        rows.append({"suite": it.skill, "item_id": it.id, "prompt": it.prompt, "expected": it.answer,
                     "champion_output": champ_out[i] if champ_out else None, "candidate_output": cand_out[i],
                     "champion_correct": champ_correct[i] if champ_out else None,
                     "candidate_correct": cand_correct[i],
                     "champion_lenient_correct": verifier.verify_lenient(champ_out[i], it.answer) if champ_out
                     else None,
                     "candidate_lenient_correct": verifier.verify_lenient(cand_out[i], it.answer)})
    return rows, suite_statistics(rows, names, cfg), kl_core


def suite_statistics(rows: list[dict], names: list[str], cfg: EvalConfig) -> dict[str, SuiteStats]:
    """Per-suite paired statistics from per-item rows (champion fields None when there is no champion)."""
    nan = math.nan
    out = {}
    for suite in names:
        sel = [r for r in rows if r["suite"] == suite]
        cand = [bool(r["candidate_correct"]) for r in sel]
        cand_len = sum(bool(r["candidate_lenient_correct"]) for r in sel) / len(sel)
        if sel[0]["champion_correct"] is None:
            out[suite] = SuiteStats(suite=suite, n=len(sel), champion_acc=nan, candidate_acc=sum(cand) / len(sel),
                                    delta=nan, delta_ci_low=nan, delta_ci_high=nan, mcnemar_p=nan,
                                    champion_lenient_acc=nan, candidate_lenient_acc=cand_len)
            continue
        champ = [bool(r["champion_correct"]) for r in sel]
        st = paired_stats(champ, cand, cfg.bootstrap_resamples, cfg.confidence, cfg.seed)
        out[suite] = SuiteStats(suite=suite, n=st.n, champion_acc=st.champion_acc, candidate_acc=st.candidate_acc,
                                delta=st.delta, delta_ci_low=st.delta_ci_low, delta_ci_high=st.delta_ci_high,
                                mcnemar_p=st.mcnemar_p,
                                champion_lenient_acc=sum(bool(r["champion_lenient_correct"]) for r in sel) / len(sel),
                                candidate_lenient_acc=cand_len)
    return out


def kl_drift(champ_model, champ_tok, cand_model, cand_tok, prompts: list[str], max_new_tokens: int, seed: int,
             batch_size: int = 512) -> float:
    """Mean per-token KL(champion || candidate) over completions sampled from the champion (temperature 1).

    Tokens are the sampled completion up to and including the first EOS; the KL at each is over the
    full vocabulary, exact rather than estimated from the sampled token.
    """
    check_same_tokenizer(champ_tok, cand_tok, "the champion", "the candidate")
    if not prompts:
        return math.nan
    total, count = 0.0, 0
    for batch in sample_from_champion(champ_model, champ_tok, prompts, max_new_tokens, seed, batch_size):
        kl = token_kl(champ_model, cand_model, batch)
        total += float((kl * batch["keep"]).sum())
        count += int(batch["keep"].sum())
    return total / count if count else math.nan


def sample_from_champion(model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int,
                         batch_size: int = 512) -> list[dict]:
    """Left-padded prompt + sampled completion per row, with the attention mask, position ids and `keep`
    (completion tokens up to and including the first EOS); the global torch RNG is left as it was."""
    import torch

    texts = as_text(tokenizer, prompts)
    add_special = add_special_tokens(tokenizer)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    batches = []
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                                add_special_tokens=add_special).to(model.device)
                width = enc["input_ids"].shape[1]
                seq = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                     max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id)
                is_eos = (seq[:, width:] == tokenizer.eos_token_id).int()
                keep = (is_eos.cumsum(1) - is_eos) == 0
                attention = torch.cat([enc["attention_mask"], keep.int()], dim=1)
                positions = (attention.cumsum(1) - 1).clamp(min=0)  # left padding: count real tokens only
                batches.append({"seq": seq, "attention": attention, "positions": positions, "keep": keep,
                                "width": width})
    finally:
        torch.random.set_rng_state(state)
        model.train(was_training)
    return batches


def token_kl(champ_model, cand_model, batch: dict):
    """KL(champion || candidate) over the full vocabulary at every completion position of a sampled batch."""
    import torch

    with torch.no_grad():
        logp = completion_logprobs(champ_model, batch)
        logq = completion_logprobs(cand_model, batch)
    if logp.shape != logq.shape:
        raise ValueError("champion and candidate have different vocabulary sizes; cannot compare them")
    return (logp.exp() * (logp - logq)).sum(-1)


def completion_logprobs(model, batch: dict):
    import torch

    was_training = model.training
    model.eval()
    try:
        logits = model(input_ids=batch["seq"].to(model.device), attention_mask=batch["attention"].to(model.device),
                       position_ids=batch["positions"].to(model.device)).logits
    finally:
        model.train(was_training)
    width = batch["width"]
    return torch.log_softmax(logits[:, width - 1:-1].float(), dim=-1).to(batch["seq"].device)


def _complete(model, tokenizer, prompts: list[str], cfg: EvalConfig, progress: Progress) -> list[str]:
    return greedy_complete(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                           on_batch=progress.advance)


def _correct(items, outputs: list[str], catalogue: Catalogue) -> list[bool]:
    """Strict (exact-match) correctness of each output."""
    return [bool(catalogue[it.skill].verify(out, it.answer)) for it, out in zip(items, outputs, strict=True)]


def _interleave(lists: list[list[str]], n: int) -> list[str]:
    """Up to n prompts taken round-robin from the lists, so every core skill is represented."""
    out: list[str] = []
    for i in range(max((len(x) for x in lists), default=0)):
        for x in lists:
            if i < len(x) and len(out) < n:
                out.append(x[i])
    return out


def _write_jsonl_atomic(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
    return path
