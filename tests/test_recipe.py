"""Beyond the study: augmentation, BatchNorm, the schedule and AdamW, label smoothing, the moving average
of the weights and flip test-time augmentation, each against its definition; the VGG-style model."""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import load_config, model_logits

from fmnist_jax import augment, models, ops, parallel
from fmnist_jax.errors import ConfigError
from fmnist_jax.training import state as train_state
from fmnist_jax.training import step as steps

KEY = jax.random.key(7)
# A narrow VGG-BN for the behavioural checks (the real widths where a count or a shape is the point): every
# test builds it with one compiled initialisation.
SMALL = {"widths": (8, 16, 16), "head_width": 32}


def random_batch(n=32, seed=0):
    return np.random.default_rng(seed).random((n, 28, 28, 1), dtype=np.float32)


def small_vgg(**kwargs):
    return models.create_model("vgg_bn", seed=0, **SMALL, **kwargs)


def small_vgg_config(**overrides):
    """configs/vgg_bn.py with the narrow model."""
    return load_config("vgg_bn", **{f"model.{k}": v for k, v in SMALL.items()}, **overrides)


# Augmentation as training runs it, inside a jitted program: one compilation per batch shape and setting instead
# of one per operation.
augment_jitted = jax.jit(augment.apply, static_argnums=2)


def abstractly(fn):
    """What `fn()` returns when it runs under `jax.eval_shape`: its arrays traced for their shapes only, nothing
    computed or compiled (for the checks of shapes and parameter counts)."""
    result = []
    jax.eval_shape(lambda: result.append(fn()))
    return result[0]


def shifted(image, dy, dx):
    """`image` (H, W) shown shifted: output (i, j) is source (i + dy, j + dx), zero outside (pad and crop)."""
    h, w = image.shape
    padded = np.pad(image, 14)
    return padded[14 + dy : 14 + dy + h, 14 + dx : 14 + dx + w]


# --------------------------------------------------------------------------------------------- augmentation


def test_disabled_augmentation_is_the_identity_and_the_study_has_none():
    x = random_batch()
    assert augment.apply(x, KEY, augment.Augment()) is x
    assert all(
        a.enabled for a in (augment.Augment(flip=True), augment.Augment(translate=1), augment.Augment(erase_prob=0.1))
    )
    assert not train_state.Recipe.from_config(load_config("cnn")).augment.enabled
    assert train_state.Recipe.from_config(load_config("vgg_bn")).augment.enabled


def test_flip_mirrors_about_half_the_images_and_keeps_the_rest():
    x = random_batch(64)
    y = np.asarray(augment_jitted(x, KEY, augment.Augment(flip=True)))
    same = np.all(y == x, axis=(1, 2, 3))
    mirrored = np.all(y == x[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same ^ mirrored)  # each image exactly one of the two, bit for bit
    assert 20 <= mirrored.sum() <= 44


def test_translation_is_pad_and_crop_with_every_shift_in_range():
    t = 2
    x = random_batch(200)
    y = np.asarray(augment_jitted(x, KEY, augment.Augment(translate=t)))
    seen = set()
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(-t, t + 1)
            for dx in range(-t, t + 1)
            if np.array_equal(shifted(x[i, :, :, 0], dy, dx), y[i, :, :, 0])
        ]
        assert len(matches) == 1, f"image {i} is not one pad-and-crop shift of its source"
        seen.add(matches[0])
    assert len(seen) == (2 * t + 1) ** 2  # all 25 shifts occur in 200 images


def test_flip_and_shift_together_mirror_then_shift():
    x = random_batch(400)
    y = np.asarray(augment_jitted(x, KEY, augment.Augment(flip=True, translate=1)))
    seen = []
    for i in range(len(x)):
        matches = [
            (flip, dy, dx)
            for flip, src in ((False, x[i, :, :, 0]), (True, x[i, :, ::-1, 0]))
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if np.array_equal(shifted(src, dy, dx), y[i, :, :, 0])
        ]
        assert len(matches) == 1, f"image {i} is not one shift of its source or of its mirror image"
        seen.append(matches[0])
    assert len(set(seen)) == 2 * 3 * 3  # every (flip, shift) pair occurs in 400 images
    assert 160 <= sum(flip for flip, _, _ in seen) <= 240  # about half mirrored


def test_erasing_replaces_one_rectangle_of_bounded_area_with_noise():
    x = np.full((400, 28, 28, 1), 2.0, np.float32)  # outside [0, 1): every erased pixel is visible
    y = np.asarray(augment_jitted(x, KEY, augment.Augment(erase_prob=0.5)))[..., 0]
    erased = y != 2.0
    hit = erased.any(axis=(1, 2))
    assert 160 <= hit.sum() <= 240
    assert np.all((y[erased] >= 0) & (y[erased] < 1))
    for mask in erased[hit]:
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        assert box.all() and box.sum() == mask.sum()  # one solid rectangle
        area = box.size / (28 * 28)
        assert augment.ERASE_AREA[0] / 2 <= area <= augment.ERASE_AREA[1] * 1.3


def test_erased_rectangles_have_their_drawn_size_reach_every_edge_and_noise_of_their_own():
    """Each rectangle is as tall and wide as its drawn area and aspect make it (recomputed here from the same
    uniforms, in float64: a float32 tie may round the other way), and its top-left corner ranges over every place it
    fits, so rectangles reach the last row and column; the noise is drawn apart from the rectangles' numbers."""
    n = 2000
    x = np.full((n, 28, 28, 1), 2.0, np.float32)
    y = np.asarray(augment_jitted(x, KEY, augment.Augment(erase_prob=1.0)))[..., 0]
    erased = y != 2.0
    assert all(erased[:, i, :].any() and erased[:, :, i].any() for i in (0, -1))
    u = np.asarray(augment._uniform(KEY, (n, 8)), np.float64)
    area = (augment.ERASE_AREA[0] + u[:, 4] * (augment.ERASE_AREA[1] - augment.ERASE_AREA[0])) * 28 * 28
    log_lo, log_hi = np.log(augment.ERASE_ASPECT[0]), np.log(augment.ERASE_ASPECT[1])
    aspect = np.exp(log_lo + u[:, 5] * (log_hi - log_lo))
    height, width = (np.clip(np.round(np.sqrt(area * a)), 1, 28) for a in (aspect, 1 / aspect))
    assert np.mean(erased.any(axis=2).sum(1) == height) > 0.99 and np.mean(erased.any(axis=1).sum(1) == width) > 0.99
    same_stream = np.asarray(augment._uniform(KEY, (n, 28, 28)))
    assert np.mean(y[erased] == same_stream[erased]) < 0.01


def test_each_step_draws_dropout_and_augmentation_from_their_own_roots(monkeypatch):
    """Step t's keys are fold_in(dropout root, t) and fold_in(augmentation root, t): two streams, never one."""
    seen = []
    monkeypatch.setattr(steps, "train_step", lambda graphs, recipe, state, x, y, keys, step: seen.append(keys))
    roots = train_state.RandomRoots.from_seed(0, augment=True)
    images, labels = jnp.zeros((8, 28, 28), jnp.uint8), jnp.zeros(8, jnp.int32)
    inputs = steps.TrainInputs(images, labels, jnp.arange(8), roots.dropout, roots.augment)
    spec = types.SimpleNamespace(mesh=parallel.make_mesh(), batch_size=4, graphs=None, recipe=None, unroll=False)
    steps.train_steps(spec, None, inputs, jnp.int32(5), jnp.int32(0), num_steps=1)
    ((dropout, augmentation),) = seen
    for key, root in ((dropout, roots.dropout), (augmentation, roots.augment)):
        np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(jax.random.fold_in(root, 5)))


@pytest.mark.heavy
def test_augmentation_is_a_pure_function_of_key_and_position_in_the_batch():
    setting = augment.Augment(flip=True, translate=2, erase_prob=0.5)
    x = random_batch(64)
    a = np.asarray(augment_jitted(x, KEY, setting))
    np.testing.assert_array_equal(a, augment_jitted(x, KEY, setting))
    # The first 16 images get the same transforms whether the batch holds 16 or 64: nothing depends on the
    # batch's size or on which device holds an image, only on (key, position).
    np.testing.assert_array_equal(augment_jitted(x[:16], KEY, setting), a[:16])
    assert not np.array_equal(augment_jitted(x, jax.random.key(8), setting), a)


# --------------------------------------------------------------------------------------------- optimizer, loss


def test_warmup_cosine_schedule_and_the_studys_constant_rate():
    config = load_config("vgg_bn", num_epochs=10, learning_rate=0.01, **{"schedule.warmup_epochs": 2.0})
    lr = train_state.learning_rates_at(config, 100, [0, 100, 200, 600, 1000])
    np.testing.assert_allclose(lr, [0.0, 0.005, 0.01, 0.01 * 0.5 * (1 + np.cos(np.pi * 400 / 800)), 0.0], atol=1e-7)
    study = load_config("cnn")
    assert list(train_state.learning_rates_at(study, 750, [0, 12345])) == [study.learning_rate] * 2
    one_epoch = load_config("vgg_bn", num_epochs=1)  # its warm-up is an epoch: all but the last step warm up
    np.testing.assert_allclose(train_state.learning_rates_at(one_epoch, 4, [0, 3]), [0.0, 0.003], atol=1e-9)
    assert train_state.learning_rate_schedule(study, 750) == study.learning_rate  # a float: the study's optax.adam


def test_a_fresh_train_state_its_roots_and_its_rates_compile_a_program_each_not_one_per_operation():
    """The model, the optimizer's state with the zero sums and the moving average's start, the random roots and the
    schedule's rates: built op by op, they compiled a program per parameter shape and per operation in every new
    process (36 for the speedrun's set-up, 21 for the study's); now a program each, with the values op by op gives.
    Widths no other test builds, so that this process's caches hold none of the programs."""
    from jax._src import dispatch

    config = load_config("vgg_bn", ema_decay=0.9, **{"model.widths": (3, 5, 7), "model.head_width": 9})
    lowered = []

    def count(event, duration, **kwargs):
        lowered.extend([event] if event == dispatch.JAXPR_TO_MLIR_MODULE_EVENT else [])

    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        graphs, state, _ = train_state.create_train_state(config, 7)
        roots = train_state.RandomRoots.from_seed(11, augment=True)
        rates = train_state.learning_rates_at(config, 7, [0, 5, 30])
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    assert 3 <= len(lowered) <= 4  # the model, the rest of the state, the rates; the roots unless built before
    model, optimizer = graphs.merge(state)
    eager = nnx.Optimizer(model, train_state.make_optimizer(config, 7), wrt=nnx.Param)
    assert jax.tree.structure(nnx.state(optimizer)) == jax.tree.structure(nnx.state(eager))
    for built, op_by_op in zip(jax.tree.leaves(nnx.state(optimizer)), jax.tree.leaves(nnx.state(eager)), strict=True):
        np.testing.assert_array_equal(built, op_by_op)
    jax.tree.map(np.testing.assert_array_equal, state.ema, state.model)
    assert float(state.loss_sum) == float(state.correct_sum) == 0.0
    root = jax.random.key(11)
    for built, i in ((roots.data, 1), (roots.dropout, 2), (roots.augment, 3)):
        np.testing.assert_array_equal(jax.random.key_data(built), jax.random.key_data(jax.random.fold_in(root, i)))
    schedule = train_state.learning_rate_schedule(config, 7)
    np.testing.assert_allclose(rates, [float(schedule(s)) for s in (0, 5, 30)], rtol=1e-6)


@pytest.mark.heavy
def test_adamw_decays_kernels_only():
    config = load_config("vgg_bn", learning_rate=0.1, weight_decay=0.5, **{"schedule.name": "constant"})
    model = small_vgg()
    model.norms[0].scale[...] = np.full(model.norms[0].scale.shape, 2.0, np.float32)
    before = nnx.to_flat_state(nnx.clone(nnx.state(model, nnx.Param)))
    optimizer = nnx.Optimizer(model, train_state.make_optimizer(config), wrt=nnx.Param)
    zero_grads = jax.tree.map(np.zeros_like, nnx.state(model, nnx.Param))
    nnx.jit(lambda optimizer, model, grads: optimizer.update(model, grads))(optimizer, model, zero_grads)
    after = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert {path[-1] for path, _ in before} == {"kernel", "bias", "scale"}
    for path, variable in before:  # a zero gradient: the decay alone moves a parameter
        new, old = np.asarray(after[path][...]), np.asarray(variable[...])
        if path[-1] == "kernel":  # convolution and Dense kernels
            np.testing.assert_allclose(new, old * (1 - 0.1 * 0.5), rtol=1e-6, err_msg=str(path))
        else:  # biases, BatchNorm scales and offsets
            np.testing.assert_array_equal(new, old, err_msg=str(path))
    np.testing.assert_array_equal(after[("norms", 0, "scale")][...], 2.0)


def test_the_configs_augmentation_reaches_the_train_step(monkeypatch):
    """A train step given the recipe's augmentation key trains on `augment.apply(batch, key, the config's
    augmentation)` (traced, not compiled: what `augment.apply` does is the tests' above)."""
    config = small_vgg_config()
    graphs, state, _ = train_state.create_train_state(config)
    recipe, calls = train_state.Recipe.from_config(config), []

    def recorded(inputs, key, settings):
        calls.append((inputs.shape, settings))
        return inputs

    monkeypatch.setattr(augment, "apply", recorded)
    images, labels = np.zeros((8, 28, 28), np.uint8), np.arange(8) % 10
    for key in (jax.random.key(2), None):
        jax.eval_shape(functools.partial(steps.train_step, graphs, recipe), state, images, labels, (key, key), 0)
    assert recipe.augment.enabled and calls == [((8, 28, 28, 1), recipe.augment)]  # none without a key


def test_label_smoothing_is_cross_entropy_against_smoothed_targets():
    """The loss with smoothed targets, and the config's value reaching the training recipe (vgg_bn's 0.1)."""
    assert (
        train_state.Recipe.from_config(load_config("vgg_bn")).label_smoothing
        == load_config("vgg_bn").label_smoothing
        > 0
    )
    model = small_vgg()
    x, labels = random_batch(8), np.arange(8) % 10

    @nnx.jit
    def both_losses(model):
        return steps.loss_fn(model, x, labels, None, 0.0), steps.loss_fn(model, x, labels, None, 0.1)

    (plain, logits), (smooth, _) = both_losses(model)
    logits = np.asarray(logits, np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    targets = 0.9 * np.eye(10)[labels] + 0.01
    np.testing.assert_allclose(smooth, -(targets * logp).sum(-1).mean(), rtol=1e-6)
    np.testing.assert_allclose(plain, -np.take_along_axis(logp, labels[:, None], 1).mean(), rtol=1e-6)


# --------------------------------------------------------------------------------------------- EMA, TTA


def test_moving_average_follows_its_definition_with_the_early_warm_up():
    ema, new = {"w": jnp.array(1.0)}, {"w": jnp.array(3.0)}
    d0 = 1 / 10  # step 0: min(0.999, 1/10)
    np.testing.assert_allclose(
        train_state.ema_update(ema, new, 0.999, jnp.int32(0))["w"], d0 * 1 + (1 - d0) * 3, rtol=1e-6
    )
    np.testing.assert_allclose(
        train_state.ema_update(ema, new, 0.999, jnp.int32(100_000))["w"], 0.999 + 0.001 * 3, rtol=1e-6
    )


def state_and_programs(config, mesh=None):
    from fmnist_jax import parallel

    mesh = mesh or parallel.make_mesh()
    graphs, state, _ = train_state.create_train_state(config)
    programs = steps.Programs(
        graphs, mesh, config.batch_size, unroll=False, recipe=train_state.Recipe.from_config(config)
    )
    return graphs, state, programs


@pytest.mark.heavy
def test_evaluation_uses_the_moving_average_when_there_is_one():
    config = small_vgg_config(tta_flip=False)
    graphs, state, programs = state_and_programs(config)
    other = train_state.create_train_state(small_vgg_config(seed=5))[1].model
    images = np.random.default_rng(0).integers(0, 255, (20, 28, 28), np.uint8)
    labels, mask = np.zeros(20, np.int32), np.ones(20, bool)
    _, probs = programs.eval(state.replace(ema=other), images, labels, mask)
    expected = jax.nn.softmax(model_logits(nnx.merge(graphs.model, other), steps.to_inputs(images)))
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    _, probs_without = programs.eval(state.replace(ema=None), images, labels, mask)
    assert not np.allclose(probs_without, probs, atol=1e-3)


def test_flip_tta_averages_the_probabilities_of_each_image_and_its_mirror():
    config = small_vgg_config(ema_decay=0.0, tta_flip=True)
    graphs, state, programs = state_and_programs(config)
    images = np.random.default_rng(1).integers(0, 255, (20, 28, 28), np.uint8)
    labels, mask = np.arange(20) % 10, np.arange(20) < 15
    losses, probs = programs.eval(state, images, labels, mask)
    model = nnx.merge(graphs.model, state.model)
    for_images, for_mirrors = (model_logits(model, steps.to_inputs(i)) for i in (images, images[:, :, ::-1]))
    expected = (jax.nn.softmax(for_images) + jax.nn.softmax(for_mirrors)) / 2
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    nll = -np.log(np.take_along_axis(np.asarray(expected), np.asarray(labels)[:, None], 1)[:, 0])
    np.testing.assert_allclose(losses, np.where(np.asarray(mask), nll, 0.0), rtol=1e-5)
    # Logits so far apart that a class's probability underflows to 0 for an image and its mirror: its loss is large,
    # not infinite (the log of the mean taken from the log-probabilities).
    loud = state.replace(model=jax.tree.map(lambda p: p * 30.0, state.model))
    losses, probs = programs.eval(loud, images, labels, mask)
    true = np.take_along_axis(np.asarray(probs), labels[:, None], 1)[:, 0]
    assert (true[mask] == 0).any() and np.isfinite(np.asarray(losses)).all() and np.asarray(losses)[mask].max() > 100


@pytest.mark.parametrize("flip", [False, True])
def test_shift_tta_averages_the_probabilities_of_each_view_shifted_up_and_down(flip):
    """tta_shift=2: the image (and its mirror, with tta_flip), each also 2 pixels up and 2 down: the mean of 3 (6)
    views' probabilities, each view's logits computed apart from the program, on pixels moved by NumPy (`shifted`)."""
    config = small_vgg_config(ema_decay=0.0, tta_flip=flip, tta_shift=2)
    graphs, state, programs = state_and_programs(config)
    images = np.random.default_rng(2).integers(0, 255, (12, 28, 28), np.uint8)
    labels, mask = np.arange(12) % 10, np.arange(12) < 9
    losses, probs = programs.eval(state, images, labels, mask)
    model = nnx.merge(graphs.model, state.model)
    flips = [images, images[:, :, ::-1]] if flip else [images]
    views = [np.stack([shifted(image, dy, 0) for image in v]) for dy in (0, 2, -2) for v in flips]  # up, then down
    expected = np.mean([jax.nn.softmax(model_logits(model, steps.to_inputs(v))) for v in views], axis=0)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    nll = -np.log(np.take_along_axis(expected, labels[:, None], 1)[:, 0])
    np.testing.assert_allclose(losses, np.where(mask, nll, 0.0), rtol=1e-5)
    got = np.asarray(steps.tta_views(steps.to_inputs(images), train_state.Recipe(tta_flip=flip, tta_shift=2)))
    assert got.shape == (12, len(views), 28, 28, 1)  # the views in this order, the image first
    np.testing.assert_array_equal(got, np.stack([steps.to_inputs(v) for v in views], axis=1))


# --------------------------------------------------------------------------------------------- model, config


def test_vgg_bn_shapes_and_parameter_count():
    """The real widths, traced abstractly (`abstractly`): shapes and counts need no parameter values."""

    def build():
        model = models.create_model("vgg_bn", seed=0)
        with_hidden = models.create_model("vgg_bn", seed=0, head_width=256)  # configs/vgg_bn.py's head
        return {
            "kernels": [c.kernel[...].shape for c in model.convs],
            "params": models.count_params(model),
            "logits": model(jnp.zeros((2, 28, 28, 1))).shape,
            "with_hidden": models.count_params(with_hidden),
            "logits_with_hidden": with_hidden(jnp.zeros((2, 28, 28, 1)), dropout_key=KEY).shape,
            "vgg_bn": train_state.create_train_state(load_config("vgg_bn"))[2],
            "speedrun": train_state.create_train_state(load_config("speedrun"))[2],
            "speedrun_gpu": train_state.create_train_state(load_config("speedrun_gpu"))[2],
        }

    built = abstractly(build)
    assert built["kernels"] == [(3, 3, 1, 32), (3, 3, 32, 64), (3, 3, 64, 64), (3, 3, 64, 128), (3, 3, 128, 128)]
    convs = 9 * (1 * 32 + 32 * 64 + 64 * 64 + 64 * 128 + 128 * 128)
    norms = 2 * (32 + 64 + 64 + 128 + 128)
    assert built["params"] == convs + norms + (3 * 3 * 128 * 10 + 10) == 289_130
    assert built["logits"] == built["logits_with_hidden"] == (2, 10)
    hidden = 3 * 3 * 128 * 256 + 256 + 256 * 10 + 10
    assert built["with_hidden"] == convs + norms + hidden == 575_338
    assert built["vgg_bn"] == 575_338
    # configs/speedrun.py: one convolution per stage of 24, 48 and 96 channels, the same Dense(256) head.
    one_per_stage = 9 * (1 * 24 + 24 * 48 + 48 * 96) + 2 * (24 + 48 + 96)
    speedrun_head = 3 * 3 * 96 * 256 + 256 + 256 * 10 + 10
    assert built["speedrun"] == one_per_stage + speedrun_head == 276_402
    assert built["speedrun_gpu"] == 575_338  # configs/speedrun_gpu.py: vgg_bn's model without its dropout


def training_loss(model, x, labels):
    """The cross-entropy of the training form's logits, as `train_step` computes it."""
    logits = model(x, dropout_key=KEY)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


# The training gradient op by op, and jitted (one program for every model of the same form and batch shape).
loss_and_gradients = nnx.value_and_grad(training_loss)
loss_and_gradients_jitted = nnx.jit(loss_and_gradients)


@pytest.mark.heavy
def test_vgg_bn_uses_batch_statistics_in_training_and_running_ones_in_evaluation():
    model = small_vgg()
    x = random_batch(16) * 3 + 1  # far from the initial running statistics (mean 0, variance 1)
    z = np.asarray(ops.conv2d_same(x, model.convs[0].kernel[...], "xla"))
    before = np.asarray(model.norms[0].mean[...])
    loss_and_gradients_jitted(model, x, np.arange(16) % 10)  # a training step's forward and backward pass
    np.testing.assert_allclose(model.norms[0].mean[...], 0.9 * before + 0.1 * z.mean(axis=(0, 1, 2)), rtol=1e-5)
    first = np.asarray(model.norms[0](z, use_running_average=False))  # batch statistics: mean 0, variance 1
    np.testing.assert_allclose(first.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(first.var(axis=(0, 1, 2)), 1.0, rtol=1e-2)
    # Evaluation: the running statistics, so no image depends on the rest of its batch and nothing is updated.
    mean, var = np.asarray(model.norms[0].mean[...]), np.asarray(model.norms[0].var[...])
    norm = model.norms[0]
    expected = (z - mean) / np.sqrt(var + 1e-5) * np.asarray(norm.scale[...]) + np.asarray(norm.bias[...])
    np.testing.assert_allclose(norm(z, use_running_average=True), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model_logits(model, x[:3]), model_logits(model, x)[:3], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.norms[0].mean[...], mean)


@pytest.mark.heavy
def test_the_fused_batch_norm_relu_pool_trains_the_same_function_as_the_plain_layers():
    """The jitted training gradient (as `train_step` computes it), with and without `fused_pool`, against the
    plain layers differentiated op by op. (Jitted on XLA:CPU, autodiff of the reshape-max pool inside the whole
    VGG-BN loses much of the gradient: 30-60 % off, so neither setting may use it in training.)"""
    x, labels = random_batch(16) * 2 - 0.5, np.arange(16) % 10

    def run(fused, jit, conv="auto"):
        model = small_vgg(fused_pool=fused, conv=conv)
        for norm in model.norms:  # BatchNorm scales of both signs, as training produces
            norm.scale[...] = np.where(np.arange(norm.scale.shape[0]) % 3 == 0, -0.8, 1.2).astype(np.float32)
        grad_fn = loss_and_gradients_jitted if jit else loss_and_gradients
        value, grads = grad_fn(model, x, labels)  # updates the running statistics
        return value, grads, nnx.state(model, nnx.BatchStat)

    ref_loss, ref_grads, ref_stats = run(False, jit=False, conv="xla")  # XLA's convolution: fewer ops to dispatch
    assert len(jax.tree.leaves(ref_stats)) == 2 * 5
    for fused in (True, False):
        loss, grads, stats = run(fused, jit=True)  # im2col, as training on CPU runs
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6, err_msg=f"fused_pool={fused}")
        for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(ref_stats), strict=True):  # running statistics
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def flax_same_conv():
    """A Flax 'SAME' 3x3 convolution from 4 to 5 channels without a bias (initialised as one jitted program)."""
    return nnx.jit(lambda: nnx.Conv(4, 5, (3, 3), padding="SAME", use_bias=False, rngs=nnx.Rngs(0)))()


@pytest.mark.parametrize("impl", ["im2col", "taps", "xla"])
def test_same_convolution_equals_flax_conv_same(impl, flax_same_conv):
    x = random_batch(3)[..., :1] * np.ones((1, 1, 1, 4), np.float32)
    same = jax.jit(ops.conv2d_same, static_argnums=2)(x, flax_same_conv.kernel[...], impl)
    np.testing.assert_allclose(same, flax_same_conv(x), rtol=1e-5, atol=1e-5)


def test_bad_recipe_fields_name_the_field(tmp_path):
    from fmnist_jax import run

    for i, (overrides, match) in enumerate(
        (
            ({"schedule.name": "step"}, r"config.schedule.name='step' must be one of \('constant', 'warmup_cosine'\)"),
            ({"label_smoothing": 1.0}, r"config.label_smoothing=1.0 must be below 1"),
            ({"augment.translate": -1}, r"config.augment.translate=-1 must be zero or more"),
            ({"model.widths": (8,) * 5, "model.depths": (1,) * 5}, r"5 pooling stages shrink 28x28 to 0"),
            ({"model.widths": (8, 8)}, r"must have the same length"),
        )
    ):
        config = load_config("vgg_bn", **overrides)
        with pytest.raises(ConfigError, match=match):
            run.run(config, tmp_path / str(i))
        assert not (tmp_path / str(i) / "config.json").exists()


def test_the_accelerator_config_builds_its_wider_deeper_model():
    config = load_config("vgg_bn_large")

    def build():  # traced abstractly: the widths and the count need no parameter values
        graphs, state, num_params = train_state.create_train_state(config)
        model = nnx.merge(graphs.model, state.model)
        return [c.kernel[...].shape[-1] for c in model.convs], num_params, state.ema is not None

    widths, num_params, has_ema = abstractly(build)
    assert widths == [64, 64, 128, 128, 256, 256]
    convs = 9 * (1 * 64 + 64 * 64 + 64 * 128 + 128 * 128 + 128 * 256 + 256 * 256)
    norms = 2 * (64 + 64 + 128 + 128 + 256 + 256)
    head = 3 * 3 * 256 * 256 + 256 + 256 * 10 + 10  # configs/vgg_bn.py's Dense(256) head on the 3x3x256 map
    assert num_params == convs + norms + head and has_ema
    # 234 steps per epoch at batch 256: a linear warm-up over 3 epochs to 4e-3, then a cosine decay to zero.
    rates = train_state.learning_rates_at(config, 234, [0, 351, 702, 702 + (23_400 - 702) // 2, 23_399])
    np.testing.assert_allclose(rates, [0.0, 2e-3, 4e-3, 2e-3, 0.0], atol=1e-6)
