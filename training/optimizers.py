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
  (ml-cvnets: ``ema = (1 - m) * ema + m * w`` with m = 0.0005); evaluation on the
  EMA weights with ``keras.callbacks.SwapEMAWeights``. Keras averages the trainable
  variables; BatchNorm moving statistics are the model's own.
* Gradient clipping: ``common.grad_clip`` -> ``global_clipnorm`` (torch
  ``clip_grad_norm_``).
"""

from __future__ import annotations

import re

import keras

NO_DECAY_NAMES = ["bias", "gamma", "beta"]


def _lr_mult(optimizer, variable) -> float:
    rules = getattr(optimizer, "lr_multiplier_rules", None) or ()
    path = getattr(variable, "path", variable.name)
    for pattern, mult in rules:
        if re.search(pattern, path):
            return float(mult)
    return 1.0


@keras.saving.register_keras_serializable(package="mvit3_training")
class LRMultiplierAdamW(keras.optimizers.AdamW):
    """AdamW with per-variable learning-rate multipliers (regex on the variable path)."""

    def __init__(self, *args, lr_multiplier_rules=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_multiplier_rules = [tuple(r) for r in lr_multiplier_rules]

    def update_step(self, gradient, variable, learning_rate):
        mult = _lr_mult(self, variable)
        if mult != 1.0:
            learning_rate = keras.ops.multiply(learning_rate, mult)
        return super().update_step(gradient, variable, learning_rate)

    def _apply_weight_decay(self, variables):
        if self.weight_decay is None:
            return
        for variable in variables:
            if self._use_weight_decay(variable):
                lr = keras.ops.cast(self.learning_rate, variable.dtype) * _lr_mult(self, variable)
                wd = keras.ops.cast(self.weight_decay, variable.dtype)
                variable.assign(variable - variable * wd * lr)

    def get_config(self):
        config = super().get_config()
        config["lr_multiplier_rules"] = [list(r) for r in self.lr_multiplier_rules]
        return config


@keras.saving.register_keras_serializable(package="mvit3_training")
class CoupledSGD(keras.optimizers.SGD):
    """SGD whose ``weight_decay`` is PyTorch's coupled L2 (``g += wd * w`` before momentum)."""

    def __init__(self, *args, lr_multiplier_rules=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_multiplier_rules = [tuple(r) for r in lr_multiplier_rules]

    def _apply_weight_decay(self, variables):
        return  # folded into the gradient in update_step

    def update_step(self, gradient, variable, learning_rate):
        if self.weight_decay is not None and self._use_weight_decay(variable):
            wd = keras.ops.cast(self.weight_decay, variable.dtype)
            gradient = keras.ops.add(gradient, keras.ops.multiply(wd, variable))
        mult = _lr_mult(self, variable)
        if mult != 1.0:
            learning_rate = keras.ops.multiply(learning_rate, mult)
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["lr_multiplier_rules"] = [list(r) for r in self.lr_multiplier_rules]
        return config


def learning_rate_schedule(values: dict, total_steps: int):
    """Warmup + cosine (``keras.optimizers.schedules.CosineDecay``) or a fixed rate.

    ml-cvnets: linear warmup from ``warmup_init_lr`` to ``max_lr`` over
    ``warmup_iterations`` optimizer steps, then cosine from ``max_lr`` to ``min_lr``.
    Keras' CosineDecay does the same (``initial_learning_rate`` = warmup start,
    ``warmup_target`` = max, ``alpha`` = min/max, decay over the remaining steps);
    it evaluates the cosine every step where ml-cvnets' epoch-based scheduler
    (``is_iteration_based: false``) steps it once per epoch.
    """
    sched = values["scheduler"]
    if sched["name"] == "fixed":
        return float(sched["fixed"]["lr"])
    if sched["name"] != "cosine":
        raise ValueError(f"scheduler.name {sched['name']!r} is not supported (cosine, fixed)")
    max_lr = float(sched["cosine"]["max_lr"])
    min_lr = float(sched["cosine"]["min_lr"])
    warmup = int(sched.get("warmup_iterations") or 0)
    total_steps = max(int(total_steps), 1)
    warmup = min(warmup, max(total_steps - 1, 0))
    if warmup > 0:
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=float(sched.get("warmup_init_lr", 0.0)),
            decay_steps=max(total_steps - warmup, 1),
            alpha=min_lr / max_lr,
            warmup_target=max_lr,
            warmup_steps=warmup,
        )
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=max_lr, decay_steps=total_steps, alpha=min_lr / max_lr
    )


def make_optimizer(values: dict, total_steps: int, *, lr_multiplier_rules=()):
    optim = values["optim"]
    ema = values.get("ema", {})
    common = values.get("common", {})
    kwargs = {
        "learning_rate": learning_rate_schedule(values, total_steps),
        "weight_decay": float(optim.get("weight_decay") or 0.0),
        "use_ema": bool(ema.get("enable", False)),
        "ema_momentum": 1.0 - float(ema.get("momentum", 0.0005)),
        "global_clipnorm": common.get("grad_clip") or None,
        "lr_multiplier_rules": lr_multiplier_rules,
    }
    name = optim["name"]
    if name == "adamw":
        opt = LRMultiplierAdamW(
            beta_1=float(optim["adamw"]["beta1"]),
            beta_2=float(optim["adamw"]["beta2"]),
            epsilon=1e-8,
            **kwargs,
        )
    elif name == "sgd":
        opt = CoupledSGD(momentum=float(optim["sgd"]["momentum"]), nesterov=False, **kwargs)
    else:
        raise ValueError(f"optim.name {name!r} is not supported (adamw, sgd)")
    if optim.get("no_decay_bn_filter_bias"):
        opt.exclude_from_weight_decay(var_names=NO_DECAY_NAMES)
    return opt
