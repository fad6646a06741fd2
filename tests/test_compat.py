"""mvit3_keras.compat: the Keras internals this project relies on are still what it
was written for (fails loudly when a Keras upgrade changes one of them)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from support.sources import python_files  # noqa: E402

from mvit3_keras import compat  # noqa: E402
from training import optimizers  # noqa: E402


def test_pinned_keras_internals_are_unchanged():
    changed = compat.changed_internals()
    assert not changed, (
        f"Keras {keras.__version__} changed {', '.join(changed)} (mvit3_keras/compat.py was "
        f"verified with Keras {compat.VERIFIED_KERAS}). Read the new source of each, adapt "
        "mvit3_keras/compat.py (and training/optimizers.py, which relies on the EMA and "
        "weight-decay hooks), then update compat.PINNED to compat.source_digests()."
    )


def test_a_missing_internal_is_a_clear_error():
    with pytest.raises(compat.KerasCompatError, match=r"Keras 3\.\d+.*_nope.*compat\.py"):
        compat.require(keras.optimizers.Optimizer, "_nope", "something")
    with pytest.raises(ValueError, match="no EMA"):
        compat.ema_pairs(keras.optimizers.SGD())


def _step(opt, var, grad):
    opt.apply_gradients([(keras.ops.convert_to_tensor(np.asarray(grad, "float32")), var)])


def test_keras_calls_the_ema_hook_with_the_warm_up():
    """The average follows timm's warmed-up decay, step by step, inside apply_gradients."""
    warmup = {"gamma": 1.0, "power": 2 / 3}
    opt = optimizers.LRMultiplierAdamW(
        learning_rate=0.1, weight_decay=0.0, use_ema=True, ema_momentum=0.99, ema_warmup=warmup
    )
    var = keras.Variable(np.zeros(3, "float32"))
    opt.build([var])
    ((model_var, average),) = compat.ema_pairs(opt)
    assert model_var is var
    expected = np.zeros(3)
    for t in range(6):
        _step(opt, var, [1.0, -1.0, 0.5])
        decay = optimizers.ema_decay_at(t, 0.99, warmup)
        expected = decay * expected + (1 - decay) * keras.ops.convert_to_numpy(var)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(average), expected, rtol=1e-5)
    assert optimizers.ema_decay_at(0, 0.99, warmup) == 0.0
    assert optimizers.ema_decay_at(87, 0.99, warmup) == pytest.approx(1 - 88 ** (-2 / 3))
    assert optimizers.ema_decay_at(10**6, 0.9995, warmup) == 0.9995
    assert optimizers.ema_decay_at(5, 0.99, None) == 0.99  # Keras' rule without warm-up


def test_keras_calls_the_weight_decay_hook():
    """Decoupled decay ``w -= lr * mult * wd * w`` (AdamW: a zero gradient moves nothing
    else), exclusions by name; SGD: the coupled L2 goes through the gradient."""
    opt = optimizers.LRMultiplierAdamW(
        learning_rate=0.1, weight_decay=0.5, lr_multiplier_rules=[("^head", 10.0)]
    )
    opt.exclude_from_weight_decay(var_names=["bias"])
    body = keras.Variable(np.ones(2, "float32"), name="kernel")
    head = keras.Variable(np.ones(2, "float32"), name="head_kernel")
    bias = keras.Variable(np.ones(2, "float32"), name="bias")
    opt.build([body, head, bias])
    zero = keras.ops.zeros((2,))
    opt.apply_gradients([(zero, body), (zero, head), (zero, bias)])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(body), 1 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(head), 1 - 10 * 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bias), 1.0)
    plain = optimizers.LRMultiplierAdamW(learning_rate=0.1, weight_decay=0.5)  # Keras' own decay
    plain.build([head])
    plain.apply_gradients([(zero, head)])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(head), 0.5 * 0.95, rtol=1e-6)
    sgd = optimizers.CoupledSGD(learning_rate=0.1, weight_decay=0.5, momentum=0.0)
    w = keras.Variable(np.ones(2, "float32"), name="kernel")
    sgd.build([w])
    sgd.apply_gradients([(zero, w)])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(w), 1 - 0.1 * 0.5, rtol=1e-6)


# --------------------------------------------------------------------------------------
# Private Keras / TensorFlow names are reached from compat.py only
# --------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent
INTERNAL_MODULES = ("keras.src", "tensorflow.python", "tensorflow.lite.python", "tf_keras")


def _private_reach(path: Path) -> list:
    """``obj._name`` on anything but ``self`` / ``cls``, and imports of internal modules."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if not node.attr.startswith("__") and owner not in ("self", "cls"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            modules += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for module in modules:
                if module.startswith(INTERNAL_MODULES):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} import {module}")
    return found


def test_keras_and_tensorflow_internals_only_in_compat():
    paths = python_files()
    paths.append(ROOT / "mvit3_cli.py")
    assert len(paths) > 50
    offending = [hit for p in paths if p.name != "compat.py" for hit in _private_reach(p)]
    assert not offending, "move these behind mvit3_keras/compat.py:\n" + "\n".join(offending)


def test_graph_helpers_read_the_functional_graph():
    inputs = keras.Input((4, 4, 3))
    conv = keras.layers.Conv2D(2, 1, name="conv")
    bn = keras.layers.BatchNormalization(name="bn")
    y = bn(conv(inputs))
    model = keras.Model(inputs, [keras.layers.ReLU(name="relu")(y), keras.layers.Softmax()(y)])
    assert compat.sole_parent(bn) is conv and compat.sole_consumer(conv) is bn
    assert compat.sole_consumer(bn) is None  # two consumers: the ReLU and the softmax
    assert compat.call_count(conv) == 1 and compat.consumer_count(bn) == 2
    assert isinstance(compat.producer(inputs), keras.layers.InputLayer)
    assert compat.producer(np.zeros(1)) is None
    assert {"Conv2D", "BatchNormalization", "ReLU"} <= compat.graph_layer_types(model)
    nested = compat.nested_layers(model, include_self=False)
    assert conv in nested and model not in nested
    assert len(compat.layer_calls(conv)) == 1


def test_interpreter_ops_lists_the_nodes():
    import tensorflow as tf

    from quantization.runtime import interpreter_ops, load_interpreter

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    interpreter = load_interpreter(flatbuffer, use_xnnpack=False)
    ops = interpreter_ops(interpreter)
    assert [op["op_name"] for op in ops] == ["FULLY_CONNECTED"]
