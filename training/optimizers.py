"""Optimizers of the recipes, built from Keras' own.

* ``adamw``: ``keras.optimizers.AdamW`` (decoupled decay ``w -= lr * wd * w``, as
  ``torch.optim.AdamW``). ``no_decay_bn_filter_bias: true`` (v2 recipes) excludes
  every 1-D parameter (biases, BatchNorm/LayerNorm/GroupNorm scales and offsets;
  ml-cvnets' rule) through ``exclude_from_weight_decay(var_names=["bias", "gamma",
  "beta"])``.
* ``sgd``: ``keras.optimizers.SGD`` with momentum. PyTorch's SGD ``weight_decay`` is
  an L2 term added to the gradient *before* momentum (coupled), unlike Keras' SGD
  decay (decoupled); :class:`CoupledSGD` adds ``wd * w`` to the gradient instead.
* ``model.segmentation.lr_multiplier`` (v1 VOC recipes: 10): ml-cvnets gives the
  segmentation head ``lr x multiplier`` and the encoder ``lr``;
  :class:`LRMultiplierAdamW` / :class:`CoupledSGD` scale the learning rate (and so
  the decay) of every variable whose path does not start with ``encoder.``.
* EMA: the optimizer's own ``use_ema`` with ``ema_momentum = 1 - ema.momentum``
  (ml-cvnets: ``ema = (1 - m) * ema + m * w`` with m = 0.0005), warmed up as timm's
  ``ModelEmaV3(use_warmup=True)``: the decay used at optimizer step ``t`` (0-based) is
  ``0`` at ``t = 0`` (the average starts as the weights) and then
  ``min(1 - m, 1 - (1 + t / gamma) ** -power)`` with timm's defaults ``gamma = 1``,
  ``power = 2/3`` (:func:`ema_decay_at`; recipe keys ``ema.warmup``,
  ``ema.warmup_gamma``, ``ema.warmup_power``). Without it a 4-epoch fine-tune of 88
  steps at ``1 - m = 0.99`` still carries 41 % of the initial weights in its EMA;
  with it the decay at step 88 is 0.95 (an average over the last ~20 steps) and
  reaches 0.99 after ~1000 steps (0.9995 after ~89k steps, ~70 ImageNet epochs at
  batch 1024, after which the official constant decay applies). The step count is
  the optimizer's ``iterations``, computed inside the compiled train step, saved in
  every backup and so continued exactly on resume. Keras averages the trainable
  variables only: BatchNorm moving statistics stay the raw model's (ml-cvnets and
  timm average those buffers too); the loop evaluates both the raw and the EMA
  weights every epoch.
* Gradient clipping: ``common.grad_clip`` -> ``global_clipnorm`` (torch
  ``clip_grad_norm_``).
"""

from __future__ import annotations

import re

import keras

from mvit3_keras import compat
from training.config import training_config

NO_DECAY_NAMES = ["bias", "gamma", "beta"]
EMA_RULE = (
    "timm ModelEmaV3 warm-up: decay at step t (0-based) = 0 at t=0, then "
    "min(decay, 1 - (1 + t / warmup_gamma) ** -warmup_power)"
)


def ema_decay_at(step: int, decay: float, warmup: dict | None = None) -> float:
    """EMA decay used at optimizer step ``step`` (0-based), as timm's ``ModelEmaV3.get_decay``
    (timm/utils/model_ema.py: ``0`` for the first update, then ``min(decay, 1 - (1 + s /
    warmup_gamma) ** -warmup_power)``). ``warmup`` ``None``: Keras' rule (``0`` then
    ``decay``)."""
    if step <= 0:
        return 0.0
    if not warmup:
        return float(decay)
    gamma, power = float(warmup["gamma"]), float(warmup["power"])
    return min(float(decay), 1.0 - (1.0 + step / gamma) ** -power)


def _lr_mult(optimizer, variable) -> float:
    rules = getattr(optimizer, "lr_multiplier_rules", None) or ()
    path = getattr(variable, "path", variable.name)
    for pattern, mult in rules:
        if re.search(pattern, path):
            return float(mult)
    return 1.0


class _RecipeOptimizer(compat.OptimizerHooks):
    """Per-variable LR multipliers (regex on the variable path) and the EMA warm-up."""

    def __init__(self, *args, lr_multiplier_rules=(), ema_warmup=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_multiplier_rules = [tuple(r) for r in lr_multiplier_rules]
        self.ema_warmup = (
            {"gamma": float(ema_warmup["gamma"]), "power": float(ema_warmup["power"])}
            if ema_warmup
            else None
        )

    def ema_decay_at(self, step: int) -> float:
        return ema_decay_at(step, self.ema_momentum, self.ema_warmup)

    def update_moving_average(self, pairs):
        """``avg = d * avg + (1 - d) * w`` with ``d`` = :func:`ema_decay_at` (``iterations``)."""
        ops = keras.ops
        t = ops.cast(self.iterations, "float32")
        decay = ops.convert_to_tensor(float(self.ema_momentum), "float32")
        if self.ema_warmup:
            gamma, power = self.ema_warmup["gamma"], self.ema_warmup["power"]
            decay = ops.minimum(decay, 1.0 - ops.power(1.0 + t / gamma, -power))
        decay = ops.where(t > 0, decay, 0.0)
        for var, average in pairs:
            d = ops.cast(decay, var.dtype)
            average.assign(d * average + (1 - d) * var)

    def get_config(self):
        config = super().get_config()
        config["lr_multiplier_rules"] = [list(r) for r in self.lr_multiplier_rules]
        config["ema_warmup"] = self.ema_warmup
        return config


@keras.saving.register_keras_serializable(package="mvit3_training")
class LRMultiplierAdamW(_RecipeOptimizer, keras.optimizers.AdamW):
    """AdamW with per-variable learning-rate multipliers and the EMA warm-up."""

    def update_step(self, gradient, variable, learning_rate):
        mult = _lr_mult(self, variable)
        if mult != 1.0:
            learning_rate = keras.ops.multiply(learning_rate, mult)
        return super().update_step(gradient, variable, learning_rate)

    def apply_weight_decay(self, variables):
        """Decoupled decay ``w -= lr * mult * wd * w`` (torch AdamW, with ml-cvnets' multiplier)."""
        if self.weight_decay is None:
            return
        if not self.lr_multiplier_rules:
            compat.keras_weight_decay(self, variables)
            return
        for variable in variables:
            if compat.uses_weight_decay(self, variable):
                lr = keras.ops.cast(self.learning_rate, variable.dtype) * _lr_mult(self, variable)
                wd = keras.ops.cast(self.weight_decay, variable.dtype)
                variable.assign(variable - variable * wd * lr)


@keras.saving.register_keras_serializable(package="mvit3_training")
class CoupledSGD(_RecipeOptimizer, keras.optimizers.SGD):
    """SGD whose ``weight_decay`` is PyTorch's coupled L2 (``g += wd * w`` before momentum)."""

    def apply_weight_decay(self, variables):
        return  # folded into the gradient in update_step

    def update_step(self, gradient, variable, learning_rate):
        if self.weight_decay is not None and compat.uses_weight_decay(self, variable):
            wd = keras.ops.cast(self.weight_decay, variable.dtype)
            gradient = keras.ops.add(gradient, keras.ops.multiply(wd, variable))
        mult = _lr_mult(self, variable)
        if mult != 1.0:
            learning_rate = keras.ops.multiply(learning_rate, mult)
        return super().update_step(gradient, variable, learning_rate)


WARMUP_MAX_FRACTION = 0.25


def warmup_steps(values, total_steps: int) -> int:
    """The recipe's ``scheduler.warmup_iterations``, at most a quarter of ``total_steps``."""
    warmup = training_config(values).scheduler.warmup_iterations
    return min(warmup, int(max(int(total_steps), 1) * WARMUP_MAX_FRACTION))


def learning_rate_schedule(values, total_steps: int):
    """Warmup + cosine (``keras.optimizers.schedules.CosineDecay``) or a fixed rate.

    ml-cvnets: linear warmup from ``warmup_init_lr`` to ``max_lr`` over
    ``warmup_iterations`` optimizer steps, then cosine from ``max_lr`` to ``min_lr``.
    Keras' CosineDecay does the same (``initial_learning_rate`` = warmup start,
    ``warmup_target`` = max, ``alpha`` = min/max, decay over the remaining steps);
    it evaluates the cosine every step where ml-cvnets' epoch-based scheduler
    (``is_iteration_based: false``) steps it once per epoch.

    The warm-up is capped at a quarter of the run (:func:`warmup_steps`; ours, not
    ml-cvnets'): a run shorter than its recipe's warm-up, e.g. a 4-epoch fine-tune of
    88 steps with the demo recipe's 100 warm-up iterations, would otherwise end at its
    peak learning rate with no decay at all. The official recipes at their own length
    are unaffected (their warm-up is a small part of the run).
    """
    values = training_config(values)
    sched = values.scheduler
    if sched.name == "fixed":
        return sched.fixed.lr
    if sched.name != "cosine":
        raise ValueError(f"scheduler.name {sched.name!r} is not supported (cosine, fixed)")
    max_lr, min_lr = sched.cosine.max_lr, sched.cosine.min_lr
    total_steps = max(int(total_steps), 1)
    warmup = warmup_steps(values, total_steps)
    if warmup > 0:
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=sched.warmup_init_lr,
            decay_steps=max(total_steps - warmup, 1),
            alpha=min_lr / max_lr,
            warmup_target=max_lr,
            warmup_steps=warmup,
        )
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=max_lr, decay_steps=total_steps, alpha=min_lr / max_lr
    )


def ema_warmup_config(values) -> dict | None:
    """``{"gamma", "power"}`` of the recipe's EMA warm-up (``None``: off)."""
    ema = training_config(values).ema
    if not ema.warmup:
        return None
    return {"gamma": ema.warmup_gamma, "power": ema.warmup_power}


def make_optimizer(values, total_steps: int, *, lr_multiplier_rules=()):
    """The recipe's optimizer (``optim.name``: AdamW or SGD) with its schedule, decay
    exclusions, gradient clip and EMA (a :class:`~training.config.TrainingConfig` or
    its nested dict)."""
    values = training_config(values)
    optim = values.optim
    kwargs = {
        "learning_rate": learning_rate_schedule(values, total_steps),
        "weight_decay": optim.weight_decay,
        "use_ema": values.ema.enable,
        "ema_momentum": 1.0 - values.ema.momentum,
        "global_clipnorm": values.common.grad_clip or None,
        "lr_multiplier_rules": lr_multiplier_rules,
        "ema_warmup": ema_warmup_config(values),
    }
    if optim.name == "adamw":
        opt = LRMultiplierAdamW(
            beta_1=optim.adamw.beta1, beta_2=optim.adamw.beta2, epsilon=1e-8, **kwargs
        )
    elif optim.name == "sgd":
        opt = CoupledSGD(momentum=optim.sgd.momentum, nesterov=False, **kwargs)
    else:
        raise ValueError(f"optim.name {optim.name!r} is not supported (adamw, sgd)")
    if optim.no_decay_bn_filter_bias:
        opt.exclude_from_weight_decay(var_names=NO_DECAY_NAMES)
    return opt
