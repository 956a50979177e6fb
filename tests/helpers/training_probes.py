"""Trainer callbacks that tests use to look inside a training run: weights moved, autocast on, gradients taken."""


def weight_motion():
    """A callback recording, per run, the share of weights that changed and whether forwards ran under autocast.

    `changed` (fraction of elements whose value changed from `on_train_begin` to `on_train_end`), `dtypes`
    (of the trained parameters) and `autocast` (True/False per forward of the first decoder layer).
    """
    import torch
    from transformers import TrainerCallback

    class WeightMotion(TrainerCallback):
        def __init__(self):
            self.before: dict = {}
            self.changed = float("nan")
            self.dtypes: set = set()
            self.autocast: list[bool] = []
            self._hook = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
            self.dtypes = {p.dtype for p in model.parameters()}
            device = next(model.parameters()).device.type
            layer = model.get_decoder().layers[0]
            self._hook = layer.register_forward_hook(
                lambda *_: self.autocast.append(torch.is_autocast_enabled(device)) if layer.training else None)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            self._hook.remove()
            self.changed = changed_fraction(self.before, dict(model.named_parameters()))

    return WeightMotion()


def changed_fraction(before: dict, after: dict) -> float:
    """Share of all elements of `before`'s tensors whose value differs in `after` (same names)."""
    changed = sum(int((after[n].detach().to(t.dtype) != t).sum()) for n, t in before.items())
    return changed / sum(t.numel() for t in before.values())


def first_step_recorder():
    """A callback keeping the gradients (before the first optimizer step) and the first logged loss.

    It turns gradient clipping off when training begins: clipping rescales any gradient to the same norm, so it
    would hide a loss that is off by a constant factor.
    """
    from transformers import TrainerCallback

    class FirstStep(TrainerCallback):
        def __init__(self):
            self.grads: dict | None = None
            self.loss: float | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            args.max_grad_norm = 0.0

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if self.grads is None:
                self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.loss is None and logs and "loss" in logs:
                self.loss = float(logs["loss"])

    return FirstStep()
