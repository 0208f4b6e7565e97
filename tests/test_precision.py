"""config.compute_dtype: bfloat16 products with float32 accumulation, parameters and optimizer state; the float32
path is the study's, bit for bit (tests/test_fingerprint.py); checkpoints are float32 whatever the compute dtype."""

import copy
import functools
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tolerances
from flax import nnx
from helpers import load_config

from fmnist_jax import checkpoints, metrics, models, ops, run
from fmnist_jax.errors import ConfigError
from fmnist_jax.training import state as train_state


def relative_error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@functools.partial(jax.jit, static_argnums=0)
def value_and_grads(fn, x, kernel, weights):
    """fn(x, kernel) and the float32 gradients of sum(fn(x, kernel) * weights) with respect to x and kernel, as
    one jitted program: one compilation instead of one per operation."""

    def loss(x, kernel):
        return jnp.sum(fn(x, kernel).astype(jnp.float32) * weights)

    return fn(x, kernel), jax.grad(loss, (0, 1))(x, kernel)


@pytest.mark.heavy
@pytest.mark.parametrize("impl", ["im2col", "taps", "xla"])
@pytest.mark.parametrize("channels", [1, 16])
def test_bfloat16_convolution_rounds_operands_and_accumulates_in_float32(impl, channels):
    rng = np.random.default_rng(0)
    x, kernel = (rng.standard_normal(shape, dtype=np.float32) for shape in ((4, 12, 12, channels), (3, 3, channels, 8)))
    fn = functools.partial(ops.conv2d_valid, impl=impl, compute_dtype=jnp.bfloat16)
    y, grads = value_and_grads(fn, x, kernel, rng.standard_normal((4, 10, 10, 8), dtype=np.float32))
    assert y.dtype == jnp.bfloat16
    exact = ops.conv2d_valid(x, kernel, "xla")

    # The bfloat16 operands' rounding (8 bits) bounds the error; a bfloat16 accumulation of 9 * 16 terms would
    # be far worse. What float32 accumulation of the rounded operands gives, rounded once at the end (the
    # operands rounded on the host):
    def bf16_values(a):
        return a.astype(jnp.bfloat16).astype(np.float32)

    rounded = ops.conv2d_valid(bf16_values(x), bf16_values(kernel), "xla")
    if channels == 1 and impl == "taps":
        rounded = exact  # the one-channel taps multiply in float32
    # One rounding to bfloat16 at the end (at most 2^-9 of each element), not one per addition:
    tolerances.assert_within(relative_error(y, rounded), 2**-8, "against float32 sums of the rounded operands")
    tolerances.assert_within(relative_error(y, exact), 1e-2, "against float32")
    assert [g.dtype for g in grads] == [jnp.float32, jnp.float32]  # cotangents come back in the inputs' dtype


@pytest.mark.parametrize(
    "x_shape,k_shape",
    [
        ((4, 13, 13, 16), (3, 3, 16, 8)),
        ((3, 7, 9, 5), (3, 3, 5, 8)),
        ((1, 5, 7, 2), (2, 3, 2, 1)),  # kernels of unequal sides, one image, one output channel
        ((3, 8, 5, 2), (4, 1, 2, 5)),
        ((2, 6, 4, 3), (1, 1, 3, 4)),
    ],
)
@pytest.mark.parametrize("impl", ["taps", "im2col"])
def test_bfloat16_training_convolutions_give_float32_sums_of_the_rounded_operands(impl, x_shape, k_shape):
    """`taps_mixed` and `im2col_mixed`, the bfloat16 training convolutions on CPU (several input channels): each
    product in float32 over the operands rounded to bfloat16; the output rounded once, both gradients in float32, the
    input's fold-back over the overlapping windows too (summed in bfloat16, its error was about twice XLA's)."""
    rng = np.random.default_rng(1)
    x, kernel = (rng.standard_normal(shape, dtype=np.float32) for shape in (x_shape, k_shape))

    def rounded(a):
        return jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32)

    ref_y, ref_pullback = jax.vjp(lambda x, k: ops.conv2d_valid(x, k, "xla"), rounded(x), rounded(kernel))
    dy = rng.standard_normal(ref_y.shape, dtype=np.float32)
    ref_dx, ref_dk = ref_pullback(rounded(dy))
    y, pullback = jax.vjp(lambda x, k: ops.conv2d_valid(x, k, impl, compute_dtype=jnp.bfloat16), x, kernel)
    dx, dk = pullback(jnp.asarray(dy, jnp.bfloat16))
    assert (y.dtype, dx.dtype, dk.dtype) == (jnp.bfloat16, jnp.float32, jnp.float32)
    assert y.shape == ref_y.shape
    tolerances.assert_within(relative_error(y, ref_y), 2**-8, "output: one rounding to bfloat16 at the end")
    # The same float32 sums in another order: a few float32 roundings (2^-24 each), nothing of bfloat16's 2^-8.
    tolerances.assert_within(relative_error(dk, ref_dk), 1e-5, "weight gradient")
    tolerances.assert_within(relative_error(dx, ref_dx), 1e-5, "input gradient")


def test_float32_is_the_default_everywhere_and_bad_names_are_refused(tmp_path):
    for name in ("cnn", "vgg_bn", "vgg_bn_large"):
        assert load_config(name).compute_dtype == "float32"
    assert load_config("compare").members.cnn.compute_dtype == "float32"
    with pytest.raises(ConfigError, match=r"config.compute_dtype='float16' must be one of \('float32', 'bfloat16'\)"):
        run.run(load_config("cnn", compute_dtype="float16"), tmp_path)
    assert not (tmp_path / "config.json").exists()


@nnx.jit
def logits(pair, x, dropout_key):
    """`model(x, dropout_key=dropout_key)` of both models of `pair`, as one jitted program (one compilation per
    form instead of one per operation)."""
    return [model(x, dropout_key=dropout_key) for model in pair]


@pytest.mark.heavy
@pytest.mark.parametrize("name", ["seed_cnn", "vgg_bn"])
def test_bfloat16_models_keep_float32_parameters_and_logits_close_to_float32(name):
    x = jnp.asarray(np.random.default_rng(1).random((16, 28, 28, 1), dtype=np.float32))
    # vgg_bn: the narrow model of tests/test_recipe.py and tests/test_models.py (one compiled initialisation)
    shape = {"widths": (8, 16, 16), "head_width": 32} if name == "vgg_bn" else {}
    low = models.create_model(name, seed=0, compute_dtype="bfloat16", **shape)
    high = models.create_model(name, seed=0, **shape)
    assert {p.dtype for p in jax.tree.leaves(nnx.state(low))} == {jnp.dtype("float32")}
    for training in (False, True):
        key = jax.random.key(2) if training else None
        a, b = logits((low, high), x, key)
        assert a.dtype == jnp.float32
        assert relative_error(a, b) > 0  # bfloat16 products do round
        tolerances.assert_within(relative_error(a, b), 3e-2, f"logits, training={training}")


@pytest.fixture(scope="module")
def bf16_run(tiny_data, tmp_path_factory):
    config = load_config(
        "cnn",
        compute_dtype="bfloat16",
        num_epochs=3,
        steps_per_call=2,
        eval_batch_size=50,
        **{"data.dir": str(tiny_data), "data.validation_size": 64, "checkpoint.every_steps": 2},
    )
    workdir = tmp_path_factory.mktemp("bf16")
    return config, workdir, run.run(config, workdir)


def test_bfloat16_training_learns_with_float32_state(bf16_run, finished_tiny_run):
    config, workdir, results = bf16_run
    history = metrics.read_history(workdir)
    # The same steps in float32 (the session's tiny run: its first two epochs, the same data order and constant rate)
    # give other losses, as bfloat16's rounding must (a compute_dtype left unused would not), within bfloat16's
    # precision: its 8-bit significand rounds each operand by up to 2^-8 (0.4%); measured 1e-4 relative here.
    losses = [[r["train_loss"] for r in h[:2]] for h in (history, metrics.read_history(finished_tiny_run))]
    assert losses[0] != losses[1] and losses[0] == pytest.approx(losses[1], rel=2**-8)
    assert history[-1]["train_loss"] < history[0]["train_loss"] * 0.8
    assert results["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    _, target, _ = train_state.create_train_state(config)
    store = checkpoints.CheckpointStore(workdir / "checkpoints")
    state, _ = store.restore(store.all_steps()[-1], target)
    store.close()
    dtypes = {leaf.dtype for leaf in jax.tree.leaves((state.model, state.optimizer))}
    assert {d for d in dtypes if jnp.issubdtype(d, jnp.floating)} == {jnp.dtype("float32")}  # params, Adam moments


def test_bfloat16_resume_is_bit_identical(bf16_run, tmp_path):
    config, workdir, results = bf16_run
    shutil.copytree(workdir, tmp_path / "resumed")
    store = checkpoints.CheckpointStore(tmp_path / "resumed" / "checkpoints")
    last = store.all_steps()[-1]
    store.close()
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / str(last))
    (tmp_path / "resumed" / "results.json").unlink()
    assert run.run(config, tmp_path / "resumed")["params_sha256"] == results["params_sha256"]


def test_a_bfloat16_checkpoint_serves_a_float32_run(bf16_run, tmp_path):
    config, workdir, results = bf16_run
    shutil.copytree(workdir, tmp_path / "copy")
    evaluate = copy.deepcopy(config)
    evaluate.compute_dtype, evaluate.mode = "float32", "evaluate"
    evaluated = run.run(evaluate, tmp_path / "copy")
    assert evaluated["params_sha256"] == results["params_sha256"]
    assert abs(evaluated["test_accuracy"] - results["test_accuracy"]) <= 0.03  # 3 of the 100 test images
    # Scored apart from the run's bfloat16 scores, with float32's other rounding: the same class for most images.
    probs = [
        metrics.load_predictions(w)["probs"]
        for w in (workdir, tmp_path / "copy" / "evaluate_step_12_compute_dtype=float32")
    ]
    assert not np.array_equal(*probs) and np.mean(probs[0].argmax(-1) == probs[1].argmax(-1)) >= 0.97
    # Training goes on in float32 from the bfloat16 checkpoint, with the flag that allows the change.
    more = copy.deepcopy(config)
    more.compute_dtype, more.num_epochs = "float32", 4
    with pytest.raises(ConfigError, match=r"compute_dtype: 'bfloat16' -> 'float32'"):
        run.run(more, tmp_path / "copy")
    more.resume_with_changes = True
    run.run(more, tmp_path / "copy")
    assert [r["epoch"] for r in metrics.read_history(tmp_path / "copy")] == [1, 2, 3, 4]
