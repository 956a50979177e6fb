"""The private TRL the routed trainer relies on, one test per name: the checklist for a TRL upgrade.

`tasks/routed_distillation.py` subclasses TRL's `DistillationTrainer` instead of forking it, and so overrides,
calls and reads names that TRL does not promise to keep: `_compute_loss`, `_generate_and_score_completions`,
`_chunked_divergence_loss`, `_get_last_hidden_state`, `_forward_redirection`, `_metrics`, attributes the stock
trainer sets for itself (`teacher_model`, `beta`, `temperature`), and TRL behaviour it assumes without calling
it (`_prepare_inputs` carrying the route column into micro-batches, `_compute_loss`'s logit post-processing);
bench/step_efficiency.py also sets `generation_config` on the trainer. A TRL release may rename one, reorder its
arguments or change what it returns without notice, and the routed loss would then fail, or worse, train on a
silently different objective. So pyproject.toml pins TRL exactly, and this file checks, for each name, the
signature our code calls it with and the behaviour our code assumes, against the installed TRL. Upgrading TRL
means changing the pin and making this file pass; a failure names the TRL method and what in
tasks/routed_distillation.py depends on it.

Everything runs on the CPU with the demo world's character tokenizer and tiny Llamas built from scratch (no
network, no pretrained base): a few seconds after TRL's import.
"""

import contextlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROUTED = "tasks/routed_distillation.py"


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


SHAPE = dict(hidden=32, layers=2, heads=2, ffn=64)  # smaller than the demo base: these tests only need the shapes


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A routed trainer with two teachers ("target" is the first, so the stock trainer prepares it)."""
    import torch
    from datasets import Dataset
    from trl import DistillationConfig

    from demo_world.model import build_tiny_model
    from demo_world.tokenizer import build_tokenizer
    from tasks.routed_distillation import RoutedDistillationTrainer

    torch.set_num_threads(1)
    tok = build_tokenizer()
    student, target, anchor = (build_tiny_model(tok, seed=s, **SHAPE) for s in (0, 1, 2))
    with torch.no_grad():  # untrained models are near uniform: sharpen the teachers so the divergences are not tiny
        target.model.norm.weight.mul_(3.0)
        anchor.model.norm.weight.mul_(6.0)
    args = DistillationConfig(output_dir=str(tmp_path_factory.mktemp("trl-contract")), use_cpu=True, bf16=False,
                              report_to="none", gradient_checkpointing=False, per_device_train_batch_size=4,
                              max_completion_length=4, beta=1.0, temperature=0.9, disable_tqdm=True,
                              remove_unused_columns=False)
    data = Dataset.from_list([{"prompt": "1+1=", "route": "target"}] * 4)
    trainer = RoutedDistillationTrainer(student, {"target": target, "anchor": anchor}, args=args, train_dataset=data,
                                        processing_class=tok)
    return dict(trainer=trainer, tok=tok, student=student, target=target, anchor=anchor, args=args)


def _batch(tok, rows):
    """A generation batch as TRL builds it (prompts left-padded, completions right-padded) from
    (prompt, completion, ends with eos, route index) rows; a completion shorter than the widest leaves masked slots."""
    import torch

    prompts = [tok(p)["input_ids"] for p, _, _, _ in rows]
    completions = [tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] * end for _, c, end, _ in rows]
    width_p, width_c, pad = max(map(len, prompts)), max(map(len, completions)), tok.pad_token_id
    batch = {
        "prompt_ids": torch.tensor([[pad] * (width_p - len(p)) + p for p in prompts]),
        "prompt_mask": torch.tensor([[0] * (width_p - len(p)) + [1] * len(p) for p in prompts]),
        "completion_ids": torch.tensor([c + [pad] * (width_c - len(c)) for c in completions]),
        "completion_mask": torch.tensor([[1] * len(c) + [0] * (width_c - len(c)) for c in completions]),
        "route": torch.tensor([r for *_, r in rows]),
    }
    batch["num_items_in_batch"] = batch["completion_mask"].sum()
    return batch


ROWS = [("12+34=", "46", True, 0), ("rev:abc=", "cba", False, 0), ("up:hi=", "H", False, 0), ("99+1=", "100", True, 0)]


@contextlib.contextmanager
def _attrs(obj, **values):
    """Set attributes for the length of a block (the trainer is shared by the module's tests)."""
    old = {k: getattr(obj, k) for k in values}
    try:
        for k, v in values.items():
            setattr(obj, k, v)
        yield obj
    finally:
        for k, v in old.items():
            setattr(obj, k, v)


# --------------------------------------------------------------------------------------------------- the pin


def test_installed_trl_is_the_version_pyproject_pins():
    import tomllib

    import trl

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d for d in deps if re.match(r"trl\b", d)]
    assert pins == [f"trl=={trl.__version__}"], (
        f"pyproject.toml must pin TRL exactly to the installed version {trl.__version__} (found {pins}): "
        f"{ROUTED} overrides private TRL methods, and this file checks them against the installed TRL only")


# --------------------------------------------------------------------------------- _chunked_divergence_loss


def _explicit_divergence(h_s, h_t, w_s, w_t, b_s, b_t, mask, beta, temperature):
    """Full-vocabulary per-token divergence and student entropy, summed over valid tokens (plain torch)."""
    import torch

    log_s = torch.log_softmax((h_s @ w_s.T + b_s) / temperature, -1)
    log_t = torch.log_softmax((h_t @ w_t.T + b_t) / temperature, -1)
    if beta == 1.0:  # reverse KL(student || teacher)
        per_token = (log_s.exp() * (log_s - log_t)).sum(-1)
    else:  # beta == 0.0: forward KL(teacher || student)
        per_token = (log_t.exp() * (log_t - log_s)).sum(-1)
    entropy = -(log_s.exp() * log_s).sum(-1)
    keep = mask.bool()
    return per_token[keep].sum(), entropy[keep].sum()


@pytest.mark.parametrize("beta, temperature", [(1.0, 1.0), (0.0, 1.0), (1.0, 0.7)])
def test_trl_chunked_divergence_loss_returns_the_raw_sum_at_num_items_1(beta, temperature):
    import torch
    from trl.trainer.distillation_trainer import _chunked_divergence_loss as fn

    name = "trl.trainer.distillation_trainer._chunked_divergence_loss"
    params = _params(fn)
    assert params[:7] == ["student_hidden_states", "teacher_hidden_states", "student_lm_head_weight",
                          "teacher_lm_head_weight", "completion_mask", "beta", "num_items_in_batch"], (
        f"{name}: {ROUTED} route_divergences passes the hidden states, head weights, mask and beta positionally, "
        f"in this order; got {params}")
    assert {"student_lm_head_bias", "teacher_lm_head_bias", "temperature"} <= set(params), (
        f"{name}: route_divergences passes the head biases and temperature by keyword; got {params}")
    defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items()}
    head = ("student_logit_scale", "teacher_logit_scale", "student_final_logit_softcapping",
            "teacher_final_logit_softcapping")
    assert [defaults[k] for k in head] == [1.0, 1.0, None, None], (
        f"{name}: route_divergences passes no logit scale or softcap (it refuses models that have one, "
        f"_check_plain_head), so the defaults must leave the logits as they are; got {defaults}")

    torch.manual_seed(0)
    B, K, H, V = 3, 5, 8, 11
    h_s, h_t = torch.randn(B, K, H, requires_grad=True), torch.randn(B, K, H)
    w_s, w_t = torch.randn(V, H, requires_grad=True), torch.randn(V, H) * 2
    b_s, b_t = torch.randn(V), torch.randn(V)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 1, 1, 0]])  # drops 5 of 15 positions
    loss, entropy, count = fn(h_s, h_t, w_s, w_t, mask, beta, num_items_in_batch=1, student_lm_head_bias=b_s,
                              teacher_lm_head_bias=b_t, temperature=temperature)
    want_loss, want_entropy = _explicit_divergence(h_s, h_t, w_s, w_t, b_s, b_t, mask, beta, temperature)
    kind = "reverse KL" if beta == 1.0 else "forward KL"
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6, msg=lambda m: (
        f"{name}(beta={beta}, temperature={temperature}, num_items_in_batch=1) must return the raw sum of the "
        f"per-token {kind} over the unmasked tokens: {ROUTED} route_divergences sums it over routes and "
        f"_compute_loss divides once by the step's token count\n{m}"))
    torch.testing.assert_close(entropy, want_entropy, rtol=1e-5, atol=1e-6, msg=lambda m: (
        f"{name} must return the summed student entropy (at the temperature) over unmasked tokens second: "
        f"{ROUTED} _compute_loss sums it over routes for TRL's entropy metric\n{m}"))
    assert isinstance(count, torch.Tensor) and int(count) == int(mask.sum()), (
        f"{name} must return the number of unmasked tokens third, as a tensor: {ROUTED} _compute_loss sums it "
        f"over routes as its normaliser (num_items_in_batch=None) and for the kl/<route> metrics; got {count!r}")
    grads = torch.autograd.grad(loss, [h_s, w_s])
    want_grads = torch.autograd.grad(want_loss, [h_s, w_s])
    for got, want, what in zip(grads, want_grads, ("student hidden states", "student lm_head weight"), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=lambda m, what=what: (
            f"{name}: the gradient to the {what} must be the divergence's, since {ROUTED} trains the student "
            f"through it\n{m}"))


# ------------------------------------------------------------------------------------------- _compute_loss


def test_trl_compute_loss_is_called_by_compute_loss_with_the_step_token_count(world, monkeypatch):
    import torch
    from trl import DistillationTrainer

    name = "DistillationTrainer._compute_loss"
    trainer = world["trainer"]
    params = _params(DistillationTrainer._compute_loss)
    assert params == ["self", "unwrapped_student", "inputs", "num_items_in_batch"], (
        f"{name}: {ROUTED} overrides it with (unwrapped_student, inputs, num_items_in_batch); got {params}")
    assert _params(type(trainer)._compute_loss) == _params(DistillationTrainer._compute_loss)

    calls = []

    def recorder(unwrapped, inputs, num_items_in_batch):
        calls.append((unwrapped, inputs, num_items_in_batch))
        return torch.tensor(3.0, requires_grad=True), torch.tensor(6.0), torch.tensor(4)

    monkeypatch.setattr(trainer, "_compute_loss", recorder)
    inputs = {"num_items_in_batch": torch.tensor(8)}
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, inputs)
    assert len(calls) == 1 and calls[0][0] is unwrapped and calls[0][1] is inputs, (
        f"DistillationTrainer.compute_loss must call self.{name.split('.')[1]}(unwrapped_student, inputs, ...) "
        f"once per micro-batch: {ROUTED} puts the whole routed loss there; got {calls}")
    assert float(calls[0][2]) == 8.0, (
        f"DistillationTrainer.compute_loss must pass {name} the step's token count inputs['num_items_in_batch'] "
        f"(divided by the process count, 1 here) in training: {ROUTED} divides every route's sum by it, "
        f"which makes micro-batches add up to the full batch; got {calls[0][2]!r}")
    assert float(loss.detach()) == 3.0, (
        f"DistillationTrainer.compute_loss must return {name}'s first element unchanged: {ROUTED} normalises "
        f"the loss itself; got {float(loss.detach())}")
    assert trainer._metrics["train"]["entropy"][-1] == pytest.approx(1.5), (
        f"DistillationTrainer.compute_loss must log {name}'s entropy sum over its token count (the second and "
        f"third elements, summed over routes by {ROUTED}) as the entropy metric")
    trainer.model.eval()
    try:
        trainer.compute_loss(trainer.model, inputs)
    finally:
        trainer.model.train()
    assert calls[1][2] is None, (
        f"DistillationTrainer.compute_loss passes {name} num_items_in_batch=None outside training (evaluation, "
        f"prediction_step): {ROUTED} then normalises by the batch's own token count; got {calls[1][2]!r}")


@pytest.mark.parametrize("beta, temperature", [(1.0, 0.9), (0.0, 1.3)])
def test_trl_compute_loss_with_one_teacher_equals_the_routed_loss(world, beta, temperature):
    """Every row on the first route: the routed loss must be exactly TRL's own loss (the subclass's promise)."""
    import torch
    from trl import DistillationTrainer

    name = "DistillationTrainer._compute_loss"
    trainer, student = world["trainer"], world["student"]
    batch = _batch(world["tok"], ROWS)
    with _attrs(trainer, beta=beta, temperature=temperature):
        stock = DistillationTrainer._compute_loss(trainer, student, batch, batch["num_items_in_batch"])
        routed = trainer._compute_loss(student, batch, batch["num_items_in_batch"])
    assert len(stock) == 3, f"{name} must return (loss, entropy_sum, num_valid_tokens); got {len(stock)} items"
    for got, want, what in zip(routed, stock, ("loss", "entropy sum", "token count"), strict=True):
        torch.testing.assert_close(got.float(), want.float(), rtol=1e-5, atol=1e-6, msg=lambda m, what=what: (
            f"{name} (beta={beta}, temperature={temperature}) and {ROUTED}'s _compute_loss with every row on "
            f"the first teacher must give the same {what}: the routed loss replicates the stock one route by "
            f"route (same hidden states, heads, mask, divergence and normaliser)\n{m}"))


def test_trl_compute_loss_post_processes_logits_only_as_the_routed_trainer_refuses():
    """The routed loss does not replicate TRL's logit post-processing; it refuses models that need it. If TRL starts
    reading a new config attribute, the routed loss would silently differ from the stock one on such models."""
    from trl import DistillationTrainer

    from tasks.routed_distillation import _SCALED_HEAD_ATTRS

    source = inspect.getsource(DistillationTrainer._compute_loss)
    read = set(re.findall(r"getattr\(\s*(?:student|teacher)_config\s*,\s*\"(\w+)\"", source))
    assert read == set(_SCALED_HEAD_ATTRS), (
        f"DistillationTrainer._compute_loss post-processes the logits by the config attributes {sorted(read)}; "
        f"{ROUTED} refuses models with any of {sorted(_SCALED_HEAD_ATTRS)} (_SCALED_HEAD_ATTRS) because its routed "
        f"loss passes no logit scale or softcap: update _SCALED_HEAD_ATTRS (or replicate the new one)")


# --------------------------------------------------------------------------------------------- teacher_model


def test_trl_teacher_model_is_the_prepared_second_argument_and_the_stock_loss_scores_with_it(world):
    import torch
    from trl import DistillationTrainer

    trainer, student = world["trainer"], world["student"]
    params = _params(DistillationTrainer.__init__)
    assert params[1:4] == ["model", "teacher_model", "args"], (
        f"DistillationTrainer.__init__: {ROUTED} calls super().__init__(model, first_teacher, *args, **kwargs), "
        f"so the teacher must be the second positional parameter; got {params}")
    assert {"train_dataset", "processing_class", "peft_config"} <= set(params), (
        f"DistillationTrainer.__init__: tasks/distill_training.py passes these by keyword through {ROUTED}; "
        f"got {params}")
    assert trainer.accelerator.unwrap_model(trainer.teacher_model) is world["target"], (
        f"DistillationTrainer.teacher_model must hold the prepared teacher passed to __init__: {ROUTED} maps the "
        f"first route to it rather than preparing that teacher twice")
    assert trainer.teachers["target"] is trainer.teacher_model
    batch = _batch(world["tok"], [(*row[:3], 1) for row in ROWS])  # every row on the anchor route
    with _attrs(trainer, teacher_model=trainer.teachers["anchor"]):
        stock = DistillationTrainer._compute_loss(trainer, student, batch, batch["num_items_in_batch"])[0]
    routed = trainer._compute_loss(student, batch, batch["num_items_in_batch"])[0]
    first = DistillationTrainer._compute_loss(trainer, student, batch, batch["num_items_in_batch"])[0]
    assert not torch.allclose(first, routed), "the teachers must disagree for this test to mean anything"
    torch.testing.assert_close(stock, routed, rtol=1e-5, atol=1e-6, msg=lambda m: (
        f"DistillationTrainer._compute_loss must score with self.teacher_model at call time: {ROUTED}'s "
        f"parity with the stock loss assumes that is the only teacher it reads\n{m}"))


# ------------------------------------------------------------------------------------------- beta, temperature


def test_trl_beta_is_the_configs_divergence_and_read_by_the_loss_at_call_time(world):
    import torch
    from trl import DistillationTrainer

    trainer, student, batch = world["trainer"], world["student"], _batch(world["tok"], ROWS)
    assert trainer.beta == world["args"].beta, (
        f"DistillationTrainer.beta must be DistillationConfig.beta: {ROUTED} uses it for every route not in "
        f"route_betas; got {trainer.beta}")
    losses = {}
    for beta in (1.0, 0.0):
        with _attrs(trainer, beta=beta):
            losses[beta] = DistillationTrainer._compute_loss(trainer, student, batch, 1)[0]
    assert not torch.allclose(losses[1.0], losses[0.0]), (
        f"DistillationTrainer._compute_loss must read self.beta when it runs (reverse and forward KL differ): "
        f"{ROUTED} reads the same attribute, so both must mean the same divergence")


def test_trl_temperature_is_the_configs_and_divides_the_logits_in_the_loss(world):
    import torch
    from trl import DistillationTrainer
    from trl.trainer.distillation_trainer import _chunked_divergence_loss

    trainer, student, teacher = world["trainer"], world["student"], world["target"]
    batch = _batch(world["tok"], ROWS)
    assert trainer.temperature == world["args"].temperature == 0.9, (
        f"DistillationTrainer.temperature must be DistillationConfig.temperature: {ROUTED} passes it to "
        f"_chunked_divergence_loss as the stock loss does; got {trainer.temperature}")
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    k = batch["completion_ids"].size(1)
    with torch.no_grad():
        h_s = trainer._get_last_hidden_state(student, ids, attn, k)
        h_t = trainer._get_last_hidden_state(teacher, ids, attn, k)
    for temperature in (0.9, 2.0):
        want = _chunked_divergence_loss(h_s, h_t, student.lm_head.weight, teacher.lm_head.weight,
                                        batch["completion_mask"], 1.0, num_items_in_batch=1,
                                        temperature=temperature)[0]
        with _attrs(trainer, temperature=temperature):
            got = DistillationTrainer._compute_loss(trainer, student, batch, 1)[0]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=lambda m, t=temperature: (
            f"DistillationTrainer._compute_loss must use self.temperature={t} (read at call time) as the "
            f"divergence's temperature: {ROUTED} passes self.temperature the same way\n{m}"))


# ---------------------------------------------------------------------------- _generate_and_score_completions


def test_trl_generate_and_score_completions_returns_the_batch_in_prompt_order(world):
    import torch
    from trl import DistillationTrainer

    name = "DistillationTrainer._generate_and_score_completions"
    trainer, tok = world["trainer"], world["tok"]
    assert _params(DistillationTrainer._generate_and_score_completions) == ["self", "inputs"], (
        f"{name}: {ROUTED} overrides it with (inputs) and calls super() with the rows")
    prompts = ["1+1=", "rev:abcdef=", "12+7=", "up:x="]
    rows = [{"prompt": p, "route": "target" if i % 2 else "anchor"} for i, p in enumerate(prompts)]
    out = DistillationTrainer._generate_and_score_completions(trainer, rows)
    keys = {"prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "num_items_in_batch"}
    assert keys <= set(out), f"{name} must return a dict with {sorted(keys)} ({ROUTED} reads them); got {sorted(out)}"
    assert out["completion_ids"].shape == out["completion_mask"].shape and out["completion_ids"].size(0) == 4
    got = [out["prompt_ids"][i][out["prompt_mask"][i].bool()].tolist() for i in range(4)]
    assert got == [tok(p)["input_ids"] for p in prompts], (
        f"{name} must return row i for inputs[i], prompts left-padded under prompt_mask: {ROUTED} attaches the "
        f"route column by input order after super() returns")
    assert all(m.tolist() == sorted(m.tolist(), reverse=True) for m in out["completion_mask"]), (
        f"{name} must right-pad completions (mask 1s then 0s): {ROUTED}'s loss takes the last "
        f"completion_ids.size(1) positions as the completion")
    n = out["num_items_in_batch"]
    assert isinstance(n, torch.Tensor) and n.ndim == 0 and int(n) == int(out["completion_mask"].sum()), (
        f"{name} must return num_items_in_batch as a 0-d tensor counting the step's completion tokens: {ROUTED} "
        f"logs it (tokens_sampled) and divides the routed loss by it; got {n!r}")
    routed = trainer._generate_and_score_completions(rows)
    assert routed["route"].tolist() == [1, 0, 1, 0] and routed["route"].device == routed["completion_ids"].device


def test_trl_prepare_inputs_carries_the_route_column_with_its_rows_into_each_micro_batch(world, monkeypatch):
    """Not overridden, but the route column only works because TRL shuffles and splits every tensor of the
    generation batch in unison and hands each micro-batch the 0-d step token count unchanged."""
    import torch
    from trl import DistillationTrainer

    name = "DistillationTrainer._prepare_inputs"
    trainer = world["trainer"]
    assert _params(DistillationTrainer._prepare_inputs) == ["self", "generation_batch"]
    calls = []

    def generate(rows):
        calls.append(rows)
        index = torch.arange(8)
        return {"prompt_ids": index[:, None].repeat(1, 3), "prompt_mask": torch.ones(8, 3, dtype=torch.long),
                "completion_ids": 100 + index[:, None].repeat(1, 2), "completion_mask": torch.ones(8, 2),
                "num_items_in_batch": torch.tensor(17), "route": index % 3}

    monkeypatch.setattr(trainer, "_generate_and_score_completions", generate)
    monkeypatch.setattr(trainer.args, "gradient_accumulation_steps", 2)
    trainer.model.train()
    seen = []
    with _attrs(trainer, _step=0, _buffered_inputs=None):
        for step in range(2):
            trainer._step = step
            seen.append(trainer._prepare_inputs([{"prompt": "x", "route": "target"}] * 8))
    assert len(calls) == 1, f"{name} must generate once per optimizer step (then serve the buffered micro-batches)"
    rows = []
    for micro in seen:
        assert micro["route"].shape == (4,), f"{name} must split the route column into micro-batches of 4"
        torch.testing.assert_close(micro["route"], micro["prompt_ids"][:, 0] % 3, msg=lambda m: (
            f"{name} must shuffle and split the extra 'route' tensor with its rows: {ROUTED} scores each row "
            f"with the teacher its route names\n{m}"))
        torch.testing.assert_close(micro["completion_ids"][:, 0], 100 + micro["prompt_ids"][:, 0])
        assert int(micro["num_items_in_batch"]) == 17, (
            f"{name} must give every micro-batch the whole step's num_items_in_batch: {ROUTED} divides each "
            f"micro-batch's routed sum by it, so the accumulated loss is the full batch's")
        rows += micro["prompt_ids"][:, 0].tolist()
    assert sorted(rows) == list(range(8))


# ------------------------------------------------------------------------------------------ _get_last_hidden_state


def test_trl_get_last_hidden_state_returns_the_states_that_predict_the_completion(world):
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    name = "DistillationTrainer._get_last_hidden_state"
    trainer, student = world["trainer"], world["student"]
    params = _params(type(trainer)._get_last_hidden_state)
    assert params[:5] == ["self", "unwrapped_model", "input_ids", "attention_mask", "logits_to_keep"], (
        f"{name}: {ROUTED} calls it with (model, input_ids, attention_mask, logits_to_keep) positionally, for the "
        f"student directly and for each teacher through _forward_redirection; got {params}")
    batch = _batch(world["tok"], ROWS)
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    k = batch["completion_ids"].size(1)
    lora = get_peft_model(copy.deepcopy(student), LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                                lora_dropout=0.0))
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # LoRA starts as a no-op: make the adapter change the output
    student.eval()
    try:
        with torch.no_grad():
            for model, what in ((student, "a plain model"), (lora, "a peft LoRA model")):
                hidden = trainer._get_last_hidden_state(model, ids, attn, k)
                assert hidden.shape == (4, k, 32), f"{name} must return (batch, logits_to_keep, hidden) states"
                logits = model(input_ids=ids, attention_mask=attn).logits[:, -k - 1:-1]
                torch.testing.assert_close(model.get_output_embeddings()(hidden), logits, rtol=1e-4, atol=1e-5,
                                           msg=lambda m, what=what: (
                    f"{name} on {what}: its states through the model's own lm_head must be the logits that "
                    f"predict the last logits_to_keep tokens (positions -k-1 .. -2): {ROUTED} projects them with "
                    f"get_output_embeddings() against the completion mask\n{m}"))
            plain = student(input_ids=ids, attention_mask=attn).logits[:, -k - 1:-1]
            assert not torch.allclose(plain, lora(input_ids=ids, attention_mask=attn).logits[:, -k - 1:-1])
    finally:
        student.train()


# -------------------------------------------------------------------------------------------- _forward_redirection


def test_trl_forward_redirection_calls_the_method_through_the_wrapper_and_returns_its_result(world):
    import torch
    from trl.models.utils import _ForwardRedirection

    name = "DistillationTrainer._forward_redirection"
    trainer = world["trainer"]
    assert isinstance(trainer._forward_redirection, _ForwardRedirection), (
        f"{name} must be set by DistillationTrainer.__init__: {ROUTED} runs each teacher's backbone through it")
    assert _params(_ForwardRedirection.__call__)[:4] == ["self", "wrapper_module", "original_module", "method"], (
        f"{name}: {ROUTED} calls it as (wrapper, unwrapped, method, *args)")

    class Wrapper(torch.nn.Module):  # what DDP / FSDP do: the wrapper's forward calls the inner module's
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, *args, **kwargs):
            self.calls += 1
            return self.inner(*args, **kwargs)

    inner = torch.nn.Linear(2, 2)
    x = torch.randn(1, 2)
    want = inner(x)
    for wrapper in (Wrapper(inner), inner):  # prepared on one device, the "wrapper" is the model itself
        calls = []
        result = object()
        out = trainer._forward_redirection(wrapper, inner, lambda *a: calls.append(a) or result, "a", 2)
        assert out is result and calls == [("a", 2)], (
            f"{name} must call method(*args) once and return its result unchanged: {ROUTED} gets each teacher's "
            f"hidden states from it; got {out!r} after calls {calls}")
        if isinstance(wrapper, Wrapper):
            assert wrapper.calls == 1, f"{name} must run the method inside the wrapper's forward"
        torch.testing.assert_close(inner(x), want, msg=lambda m: f"{name} must restore the module's forward\n{m}")

    teacher = trainer.teachers["anchor"]
    unwrapped = trainer.accelerator.unwrap_model(teacher)
    batch = _batch(world["tok"], ROWS)
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    with torch.no_grad():
        via = trainer._forward_redirection(teacher, unwrapped, trainer._get_last_hidden_state, unwrapped, ids, attn, 3)
        direct = trainer._get_last_hidden_state(unwrapped, ids, attn, 3)
    torch.testing.assert_close(via, direct, msg=lambda m: (
        f"{name} around _get_last_hidden_state (as {ROUTED} _teacher_hidden_states calls it) must return what "
        f"the direct call returns\n{m}"))


# ------------------------------------------------------------------------------------------------------- _metrics


def test_trl_metrics_maps_mode_to_appendable_lists_that_log_averages_and_clears(world):
    trainer = world["trainer"]
    name = "DistillationTrainer._metrics"
    assert set(trainer._metrics) == {"train", "eval"}, (
        f"{name} must map 'train' and 'eval' to that mode's metrics: {ROUTED} picks one by self.model.training")
    trainer.model.train()
    trainer._metrics["train"].clear()
    trainer._metrics["train"]["kl/contract-route"].append(1.0)  # a new name: no KeyError (a defaultdict(list))
    trainer._metrics["train"]["kl/contract-route"].append(3.0)
    trainer.log({})
    logged = trainer.state.log_history[-1]
    assert logged.get("kl/contract-route") == 2.0, (
        f"DistillationTrainer.log must log the mean of each {name} list: {ROUTED} appends kl/<route> and "
        f"tokens_sampled once per micro-batch and relies on TRL averaging them; got {logged}")
    assert not trainer._metrics["train"], (
        f"DistillationTrainer.log must clear the mode's {name} after logging, so each log covers its own steps")
    trainer._metrics["eval"]["kl/contract-route"].append(5.0)
    trainer._metrics["eval"].clear()  # what measure_route_kl does after its guard pass
    assert "kl/contract-route" not in trainer._metrics["eval"]


# ----------------------------------------------------------------------------------------------- generation_config


def test_trl_generation_config_is_what_the_student_samples_with(world):
    import torch
    from transformers import GenerationConfig

    trainer, tok, args = world["trainer"], world["tok"], world["args"]
    name = "DistillationTrainer.generation_config"
    config = trainer.generation_config
    assert isinstance(config, GenerationConfig) and (
        config.max_new_tokens, config.temperature, config.do_sample, config.pad_token_id
    ) == (args.max_completion_length, args.temperature, True, tok.pad_token_id), (
        f"{name} must hold the trainer's sampling settings (bench/step_efficiency.py probe_steps edits them there "
        f"on the routed trainer); got {config}")
    with _attrs(config, min_new_tokens=3, max_new_tokens=3), torch.no_grad():
        out = trainer._generate_and_score_completions([{"prompt": "1+1=", "route": "target"}] * 3)
    assert out["completion_mask"].sum(1).tolist() == [3, 3, 3], (
        f"TRL's student sampling must read {name} at call time (min/max_new_tokens changed on it take effect): "
        f"bench/step_efficiency.py probe_steps sets min_new_tokens on it to fix the rollout length; "
        f"got lengths {out['completion_mask'].sum(1).tolist()}")


# ------------------------------------------------------------------------------- compute_loss_context_manager


def test_trainer_compute_loss_context_manager_returns_an_exit_stack(world):
    from trl import DistillationTrainer

    trainer = world["trainer"]
    stack = DistillationTrainer.compute_loss_context_manager(trainer)
    assert isinstance(stack, contextlib.ExitStack), (
        f"Trainer.compute_loss_context_manager must return a contextlib.ExitStack: {ROUTED} "
        f"(AutocastDistillationTrainer) enters the accelerator's autocast on it; got {type(stack)}")
    routed = trainer.compute_loss_context_manager()
    assert isinstance(routed, contextlib.ExitStack)
    routed.close()
