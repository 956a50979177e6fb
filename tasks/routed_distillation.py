"""On-policy distillation in which every row is scored by its own teacher.

TRL's `DistillationTrainer` scores every completion with one teacher. A continual update needs two:
target-skill prompts go to the specialist teacher, replay prompts of core skills go to the frozen
champion (the anchor), so the student learns the new skill without drifting from what it already does
well. We subclass rather than fork because everything else (on-policy sampling, batching, the chunked
full-vocabulary divergence, checkpoints, logging) is the stock trainer's, and should stay so. The
subclass adds exactly three things:

- a `route` column carried from the dataset into the generation batch (an index per row);
- a loss that runs the student backbone once, each teacher's backbone on its own rows only, and sums
  TRL's `_chunked_divergence_loss` over the routes with one shared normaliser (all valid completion
  tokens of the batch), so a row's contribution is exactly its divergence against its own teacher and
  the total is what the stock trainer would compute if each row had the right teacher;
- a divergence per route (`route_betas`: reverse KL on one route, forward KL on another), and per-route
  metrics `kl/<route>` (mean per-token divergence: reverse KL at `beta=1.0`).

It also runs the loss under the accelerator's autocast (`AutocastDistillationTrainer`, its parent). With
mixed precision (`bf16=True`) the HF Trainer relies on accelerate wrapping the model's `forward` in autocast,
but TRL's distillation loss calls the backbone and the LM head directly (through `_forward_redirection`,
which swaps that `forward` out), so on one device the stock trainer runs the student in fp32 whatever the
setting; TRL's chunked loss kernel is built to follow autocast, so entering it is all that is missing.

Micro-batches (`gradient_accumulation_steps > 1`): TRL samples the whole step at once and hands each
micro-batch the step's total completion-token count as `num_items_in_batch`; every route's divergence sum
is divided by it, so the accumulated loss and gradient equal the full batch's (tests/test_micro_batches.py).
"""

from collections.abc import Mapping
from functools import cache

from continual_opd.compat import check_same_vocab_size

ROUTE_COLUMN = "route"
# Logit post-processing the routed loss does not replicate from the stock `_compute_loss`: refuse such models.
_SCALED_HEAD_ATTRS = ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling",
                      "final_logit_softcapping")


def _check_plain_head(model, who: str) -> None:
    config = model.config.get_text_config()
    scaled = [a for a in _SCALED_HEAD_ATTRS if getattr(config, a, None) not in (None, 1.0)]
    if scaled:
        raise ValueError(f"{who} scales or caps its logits ({', '.join(scaled)}); RoutedDistillationTrainer only "
                         "supports plain lm_heads. Use the stock DistillationTrainer with one teacher for it.")


def __getattr__(name: str):
    """The trainers are built on first use: they subclass TRL's trainer, and importing TRL costs seconds that
    the command line and the flow's other stages should not pay."""
    if name == "RoutedDistillationTrainer":
        return _trainer_class()
    if name == "AutocastDistillationTrainer":
        return _autocast_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@cache
def _autocast_class():
    from trl import DistillationTrainer

    class AutocastDistillationTrainer(DistillationTrainer):
        """TRL's `DistillationTrainer` whose loss runs under the accelerator's autocast (see the module)."""

        def compute_loss_context_manager(self):
            """The Trainer's context (a no-op in transformers 5) plus the accelerator's autocast."""
            stack = super().compute_loss_context_manager()
            stack.enter_context(self.accelerator.autocast())
            return stack

    return AutocastDistillationTrainer


@cache
def _trainer_class():
    import torch
    from trl.trainer.distillation_trainer import _chunked_divergence_loss

    class RoutedDistillationTrainer(_autocast_class()):
        """`DistillationTrainer` whose rows each name their teacher in the `route` column.

        Args:
            model: the student (a loaded `PreTrainedModel`).
            teachers: route name -> frozen teacher model; every dataset row's `route` must be one of these names.
                The same model object may serve several routes.
            route_betas: route name -> TRL's `beta` for that route's rows (1.0 reverse KL, 0.0 forward KL);
                routes not named use the config's `beta`.
            Every other argument goes to `DistillationTrainer` unchanged.
        """

        def __init__(self, model, teachers: Mapping[str, torch.nn.Module], *args,
                     route_betas: Mapping[str, float] | None = None, **kwargs):
            if not teachers:
                raise ValueError("RoutedDistillationTrainer needs at least one teacher")
            _check_plain_head(model, "the student")
            for name, teacher in teachers.items():
                _check_plain_head(teacher, f"teacher {name!r}")
                check_same_vocab_size(model.config, teacher.config, "the student", f"teacher {name!r}")
            self.route_names = list(teachers)
            self.route_betas = {name: float(b) for name, b in (route_betas or {}).items()}
            unknown = sorted(set(self.route_betas) - set(self.route_names))
            if unknown:
                raise ValueError(f"route_betas names unknown routes {unknown}; routes are {self.route_names}")
            first = teachers[self.route_names[0]]
            super().__init__(model, first, *args, **kwargs)  # the stock trainer prepares the first teacher
            prepared = {id(first): self.teacher_model}
            for teacher in teachers.values():
                if id(teacher) not in prepared:
                    prepared[id(teacher)] = self.accelerator.prepare_model(teacher, evaluation_mode=True)
            self.teachers = {name: prepared[id(t)] for name, t in teachers.items()}

        def _generate_and_score_completions(self, inputs):
            try:
                index = [self.route_names.index(row[ROUTE_COLUMN]) for row in inputs]
            except KeyError:
                raise ValueError(f"every training row needs a {ROUTE_COLUMN!r} column naming its teacher") from None
            except ValueError as exc:
                raise ValueError(f"a row names an unknown route ({exc}); routes are {self.route_names}") from None
            output = super()._generate_and_score_completions(inputs)
            output[ROUTE_COLUMN] = torch.tensor(index, device=output["completion_ids"].device)
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["tokens_sampled"].append(float(output["num_items_in_batch"]))
            return output

        def _teacher_hidden_states(self, name, input_ids, attention_mask, logits_to_keep):
            teacher = self.teachers[name]
            teacher.eval()
            unwrapped = self.accelerator.unwrap_model(teacher)
            with torch.no_grad():
                hidden = self._forward_redirection(teacher, unwrapped, self._get_last_hidden_state, unwrapped,
                                                   input_ids, attention_mask, logits_to_keep)
            return hidden, unwrapped.get_output_embeddings()

        def route_divergences(self, unwrapped_student, inputs) -> dict[str, dict[str, torch.Tensor]]:
            """Per route: summed divergence to its teacher (`sum`), entropy sum, tokens."""
            input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
            attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
            loss_mask = inputs["completion_mask"]
            logits_to_keep = inputs["completion_ids"].size(1)
            student_hidden = self._get_last_hidden_state(unwrapped_student, input_ids, attention_mask, logits_to_keep)
            student_head = unwrapped_student.get_output_embeddings()

            def divergence(rows, teacher_name, beta):
                teacher_hidden, teacher_head = self._teacher_hidden_states(
                    teacher_name, input_ids[rows], attention_mask[rows], logits_to_keep)
                # num_items_in_batch=1 returns the raw sum, so routes share one normaliser in `_compute_loss`.
                return _chunked_divergence_loss(
                    student_hidden[rows], teacher_hidden, student_head.weight, teacher_head.weight, loss_mask[rows],
                    beta, num_items_in_batch=1, student_lm_head_bias=student_head.bias,
                    teacher_lm_head_bias=teacher_head.bias, temperature=self.temperature)

            out = {}
            for index, name in enumerate(self.route_names):
                rows = inputs[ROUTE_COLUMN] == index
                if not bool(rows.any()):
                    continue
                total, entropy, tokens = divergence(rows, name, self.route_betas.get(name, self.beta))
                out[name] = {"sum": total, "entropy_sum": entropy, "tokens": tokens}
            return out

        def _compute_loss(self, unwrapped_student, inputs, num_items_in_batch):
            routes = self.route_divergences(unwrapped_student, inputs)
            tokens = sum(r["tokens"] for r in routes.values())
            denominator = num_items_in_batch if num_items_in_batch is not None else tokens.clamp(min=1)
            total = sum(r["sum"] for r in routes.values())
            mode = "train" if self.model.training else "eval"
            for name, r in routes.items():
                n = max(int(r["tokens"]), 1)
                self._metrics[mode][f"kl/{name}"].append(float(r["sum"].detach()) / n)
            entropy_sum = sum(r["entropy_sum"] for r in routes.values())
            return total / denominator, entropy_sum.detach(), tokens

        @torch.no_grad()
        def measure_route_kl(self, rows: list[dict]) -> dict[str, float]:
            """Sample completions for `rows` from the current student and return the mean divergence per route.

            Used before training as a guard: a broken or mismatched teacher shows up as a huge divergence at step 0.
            """
            was_training = self.model.training
            self.model.eval()
            try:
                batch = self._generate_and_score_completions(rows)
                student = self.accelerator.unwrap_model(self.model)
                with self.accelerator.autocast():  # the precision training will run at
                    routes = self.route_divergences(student, batch)
            finally:
                self.model.train(was_training)
                self._metrics["eval"].clear()
            return {name: float(r["sum"]) / max(int(r["tokens"]), 1) for name, r in routes.items()}

    return RoutedDistillationTrainer
