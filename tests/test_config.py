"""training.config: the recipes as typed, frozen configurations."""

from __future__ import annotations

import dataclasses

import pytest

from training import recipes
from training.config import (
    ConfigError,
    TrainingConfig,
    config_dict,
    replace_path,
    training_config,
    valid_paths,
)


def _flat(values: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in recipes.flatten(values).items()}


@pytest.mark.parametrize("name", recipes.list_recipes())
def test_every_recipe_is_a_typed_config_holding_its_yaml_values(name):
    recipe = recipes.get_recipe(name)
    config = recipe.config()
    assert isinstance(config, TrainingConfig)
    typed = _flat(config_dict(config))
    for key, value in _flat(recipe.to_dict()).items():
        assert key in typed, f"{name}: yaml key {key} has no typed field"
        assert typed[key] == value, f"{name}: {key} = {typed[key]!r}, yaml says {value!r}"
    assert set(typed) == set(valid_paths())


def test_config_is_frozen_and_read_by_attribute():
    config = recipes.get_recipe("mobilevitv2_in1k").config()
    assert config.optim.weight_decay == 0.05 and config.optim.adamw.beta2 == 0.999
    assert config.scheduler.warmup_iterations == 20000
    assert config.image_augmentation.mixup.alpha == 0.2 and config.sampler.crop_size == 256
    assert config.loss.classification.smoothing == 0.1
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optim.weight_decay = 0.1


def test_keys_left_out_take_one_default():
    """The v1 yamls have no mixup: it is off, with the same defaults everywhere."""
    config = recipes.get_recipe("mobilevitv3_xxs_in1k").config()
    assert config.image_augmentation.mixup.enable is False
    assert config.sampler.name == "variable_batch_sampler" and config.sampler.crop_size == 256
    assert config.loss.classification.smoothing == 0.1  # v1: label_smoothing_factor
    assert training_config({}) == TrainingConfig()


def test_a_wrong_key_or_type_is_a_clear_error():
    with pytest.raises(
        ConfigError, match=r"optim\.weight_decy: no such recipe key.*optim\.weight_decay"
    ):
        training_config({"optim": {"weight_decy": 0.1}})
    with pytest.raises(ConfigError, match=r"scheduler\.max_epochs: expected int, got '10'"):
        training_config({"scheduler": {"max_epochs": "10"}})
    with pytest.raises(ConfigError, match=r"common\.mixed_precision: expected bool, got 1"):
        training_config({"common": {"mixed_precision": 1}})
    with pytest.raises(ConfigError, match=r"optim: expected a section"):
        training_config({"optim": 0.1})
    with pytest.raises(ConfigError, match=r"dataset\.train_batch_size0: a value is required"):
        training_config({"dataset": {"train_batch_size0": None}})


def test_replace_path_checks_the_key_and_the_type():
    config = recipes.get_recipe("demo").config()
    changed = replace_path(config, "scheduler.max_epochs", 3)
    assert changed.scheduler.max_epochs == 3 and config.scheduler.max_epochs == 30
    assert changed.optim == config.optim  # the rest is shared, untouched
    assert replace_path(config, "optim.weight_decay", 1).optim.weight_decay == 1.0  # widened
    with pytest.raises(ConfigError, match="no such recipe key"):
        replace_path(config, "scheduler.max_epoch", 3)
    with pytest.raises(ConfigError, match="expected int"):
        replace_path(config, "scheduler.max_epochs", 2.5)


def test_overrides_become_a_checked_config():
    recipe = recipes.get_recipe("mobilevitv2_in1k")
    overrides = recipes.parse_overrides(
        ['image_augmentation.mixup={"enable": false}', "runtime.seed=3"], recipe.to_dict()
    )
    config = recipe.config(overrides)
    assert config.image_augmentation.mixup.enable is False and config.runtime.seed == 3
    assert config.image_augmentation.mixup.alpha == 0.2  # a section override keeps defaults
    with pytest.raises(ValueError, match=r"runtime\.sed: no such recipe key.*runtime\.seed"):
        recipes.parse_overrides(["runtime.sed=3"], recipe.to_dict())
