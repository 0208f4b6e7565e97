"""Beyond the study: augmentation, BatchNorm, the schedule and AdamW, label smoothing, the moving average
of the weights and flip test-time augmentation, each against its definition; the VGG-style model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import load_config

from fmnist_jax import augment, models, ops
from fmnist_jax.errors import ConfigError
from fmnist_jax.training import state as train_state
from fmnist_jax.training import step as steps

KEY = jax.random.key(7)


def random_batch(n=32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random((n, 28, 28, 1), dtype=np.float32))


def shifted(image, dy, dx):
    """`image` (H, W) shown shifted: output (i, j) is source (i + dy, j + dx), zero outside (pad and crop)."""
    h, w = image.shape
    padded = np.pad(image, 14)
    return padded[14 + dy : 14 + dy + h, 14 + dx : 14 + dx + w]


# --------------------------------------------------------------------------------------------- augmentation


def test_disabled_augmentation_is_the_identity_and_the_study_has_none():
    x = random_batch()
    assert augment.apply(x, KEY, augment.Augment()) is x
    assert not train_state.Recipe.from_config(load_config("cnn")).augment.enabled
    assert train_state.Recipe.from_config(load_config("vgg_bn")).augment.enabled


def test_flip_mirrors_about_half_the_images_and_keeps_the_rest():
    x = np.asarray(random_batch(64))
    y = np.asarray(augment.apply(jnp.asarray(x), KEY, augment.Augment(flip=True)))
    same = np.all(y == x, axis=(1, 2, 3))
    mirrored = np.all(y == x[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same ^ mirrored)  # each image exactly one of the two, bit for bit
    assert 20 <= mirrored.sum() <= 44


def test_translation_is_pad_and_crop_with_every_shift_in_range():
    t = 2
    x = np.asarray(random_batch(200))
    y = np.asarray(augment.apply(jnp.asarray(x), KEY, augment.Augment(translate=t)))
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
    x = np.asarray(random_batch(400))
    y = np.asarray(augment.apply(jnp.asarray(x), KEY, augment.Augment(flip=True, translate=1)))
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
    x = jnp.full((400, 28, 28, 1), 2.0)  # outside [0, 1): every erased pixel is visible
    y = np.asarray(augment.apply(x, KEY, augment.Augment(erase_prob=0.5)))[..., 0]
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


@pytest.mark.heavy
def test_augmentation_is_a_pure_function_of_key_and_position_in_the_batch():
    setting = augment.Augment(flip=True, translate=2, erase_prob=0.5)
    x = random_batch(64)
    a = augment.apply(x, KEY, setting)
    np.testing.assert_array_equal(a, augment.apply(x, KEY, setting))
    # The first 16 images get the same transforms whether the batch holds 16 or 64: nothing depends on the
    # batch's size or on which device holds an image, only on (key, position).
    np.testing.assert_array_equal(augment.apply(x[:16], KEY, setting), a[:16])
    assert not np.array_equal(augment.apply(x, jax.random.key(8), setting), a)


# --------------------------------------------------------------------------------------------- optimizer, loss


def test_warmup_cosine_schedule_and_the_studys_constant_rate():
    config = load_config("vgg_bn", num_epochs=10, learning_rate=0.01, **{"schedule.warmup_epochs": 2.0})
    lr = [train_state.learning_rate_at(config, 100, s) for s in (0, 100, 200, 600, 1000)]
    np.testing.assert_allclose(lr, [0.0, 0.005, 0.01, 0.01 * 0.5 * (1 + np.cos(np.pi * 400 / 800)), 0.0], atol=1e-7)
    study = load_config("cnn")
    assert train_state.learning_rate_at(study, 750, 12345) == study.learning_rate
    assert train_state.learning_rate_schedule(study, 750) == study.learning_rate  # a float: the study's optax.adam


@pytest.mark.heavy
def test_adamw_decays_kernels_only():
    config = load_config("vgg_bn", learning_rate=0.1, weight_decay=0.5, **{"schedule.name": "constant"})
    model = models.create_model("vgg_bn", seed=0)
    before = nnx.to_pure_dict(nnx.clone(nnx.state(model, nnx.Param)))
    model.norms[0].scale[...] = jnp.full_like(model.norms[0].scale[...], 2.0)
    optimizer = nnx.Optimizer(model, train_state.make_optimizer(config), wrt=nnx.Param)
    optimizer.update(model, jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param)))
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    np.testing.assert_allclose(after["head"]["kernel"], before["head"]["kernel"] * (1 - 0.1 * 0.5), rtol=1e-6)
    np.testing.assert_array_equal(after["head"]["bias"], before["head"]["bias"])
    np.testing.assert_array_equal(after["norms"][0]["scale"], 2.0)


def test_label_smoothing_is_cross_entropy_against_smoothed_targets():
    model = models.create_model("seed_cnn", seed=0)
    x, labels = random_batch(8), jnp.arange(8) % 10
    plain, logits = steps.loss_fn(model, x, labels, None, 0.0)
    smooth, _ = steps.loss_fn(model, x, labels, None, 0.1)
    logp = jax.nn.log_softmax(logits)
    targets = 0.9 * jax.nn.one_hot(labels, 10) + 0.01
    np.testing.assert_allclose(smooth, -(targets * logp).sum(-1).mean(), rtol=1e-6)
    np.testing.assert_allclose(plain, -jnp.take_along_axis(logp, labels[:, None], 1).mean(), rtol=1e-6)


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
    config = load_config("vgg_bn", tta_flip=False)
    graphs, state, programs = state_and_programs(config)
    other = train_state.create_train_state(load_config("vgg_bn", seed=5))[1].model
    images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (20, 28, 28), np.uint8))
    labels, mask = jnp.zeros(20, jnp.int32), jnp.ones(20, bool)
    _, probs = programs.eval(state.replace(ema=other), images, labels, mask)
    expected = jax.nn.softmax(nnx.merge(graphs.model, other)(steps.to_inputs(images)))
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    _, probs_without = programs.eval(state.replace(ema=None), images, labels, mask)
    assert not np.allclose(probs_without, probs, atol=1e-3)


def test_flip_tta_averages_the_probabilities_of_each_image_and_its_mirror():
    config = load_config("vgg_bn", ema_decay=0.0, tta_flip=True)
    graphs, state, programs = state_and_programs(config)
    images = jnp.asarray(np.random.default_rng(1).integers(0, 255, (20, 28, 28), np.uint8))
    labels, mask = jnp.arange(20) % 10, jnp.arange(20) < 15
    losses, probs = programs.eval(state, images, labels, mask)
    model = nnx.merge(graphs.model, state.model)
    x = steps.to_inputs(images)
    expected = (jax.nn.softmax(model(x)) + jax.nn.softmax(model(x[:, :, ::-1]))) / 2
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    nll = -np.log(np.take_along_axis(np.asarray(expected), np.asarray(labels)[:, None], 1)[:, 0])
    np.testing.assert_allclose(losses, np.where(np.asarray(mask), nll, 0.0), rtol=1e-5)


# --------------------------------------------------------------------------------------------- model, config


@pytest.mark.heavy
def test_vgg_bn_shapes_and_parameter_count():
    model = models.create_model("vgg_bn", seed=0)
    kernels = [c.kernel[...].shape for c in model.convs]
    assert kernels == [(3, 3, 1, 32), (3, 3, 32, 64), (3, 3, 64, 64), (3, 3, 64, 128), (3, 3, 128, 128)]
    convs = 9 * (1 * 32 + 32 * 64 + 64 * 64 + 64 * 128 + 128 * 128)
    norms = 2 * (32 + 64 + 64 + 128 + 128)
    assert models.count_params(model) == convs + norms + (3 * 3 * 128 * 10 + 10) == 289_130
    assert model(jnp.zeros((2, 28, 28, 1))).shape == (2, 10)
    with_hidden = models.create_model("vgg_bn", seed=0, head_width=256)  # configs/vgg_bn.py's head
    hidden = 3 * 3 * 128 * 256 + 256 + 256 * 10 + 10
    assert models.count_params(with_hidden) == convs + norms + hidden == 575_338
    assert with_hidden(jnp.zeros((2, 28, 28, 1)), dropout_key=KEY).shape == (2, 10)
    assert train_state.create_train_state(load_config("vgg_bn"))[2] == 575_338
    # configs/speedrun.py: one convolution per stage, the same head.
    one_per_stage = 9 * (1 * 32 + 32 * 64 + 64 * 128) + 2 * (32 + 64 + 128)
    assert train_state.create_train_state(load_config("speedrun"))[2] == one_per_stage + hidden == 390_634


@pytest.mark.heavy
def test_vgg_bn_uses_batch_statistics_in_training_and_running_ones_in_evaluation():
    model = models.create_model("vgg_bn", seed=0, dropout=0.0)
    x = random_batch(16) * 3 + 1  # far from the initial running statistics (mean 0, variance 1)
    z = ops.conv2d_same(x, model.convs[0].kernel[...], "xla")
    before = np.asarray(model.norms[0].mean[...])
    model(x, dropout_key=KEY)
    np.testing.assert_allclose(model.norms[0].mean[...], 0.9 * before + 0.1 * z.mean(axis=(0, 1, 2)), rtol=1e-5)
    first = model.norms[0](z, use_running_average=False)  # batch statistics: per channel mean 0, variance 1
    np.testing.assert_allclose(first.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(first.var(axis=(0, 1, 2)), 1.0, rtol=1e-2)
    # Evaluation: the running statistics, so no image depends on the rest of its batch and nothing is updated.
    mean, var = np.asarray(model.norms[0].mean[...]), np.asarray(model.norms[0].var[...])
    norm = model.norms[0]
    expected = (z - mean) / np.sqrt(var + 1e-5) * norm.scale[...] + norm.bias[...]
    np.testing.assert_allclose(norm(z, use_running_average=True), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model(x[:3]), model(x)[:3], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.norms[0].mean[...], mean)


@pytest.mark.heavy
def test_the_fused_batch_norm_relu_pool_trains_the_same_function_as_the_plain_layers():
    """The jitted training gradient (as `train_step` computes it), with and without `fused_pool`, against the
    plain layers differentiated op by op. (Jitted on XLA:CPU, autodiff of the reshape-max pool inside the whole
    VGG-BN loses much of the gradient: 30-60 % off, so neither setting may use it in training.)"""
    x, labels = random_batch(16) * 2 - 0.5, jnp.arange(16) % 10

    def run(fused, jit, conv="auto"):
        model = models.create_model("vgg_bn", seed=0, widths=(8, 16, 16), head_width=32, fused_pool=fused, conv=conv)
        for norm in model.norms:  # BatchNorm scales of both signs, as training produces
            norm.scale[...] = jnp.where(jnp.arange(norm.scale.shape[0]) % 3 == 0, -0.8, 1.2)

        def loss(model):
            logits = model(x, dropout_key=KEY)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        grad_fn = nnx.value_and_grad(loss)
        value, grads = (nnx.jit(grad_fn) if jit else grad_fn)(model)  # updates the running statistics
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


@pytest.mark.parametrize("impl", ["im2col", "taps", "xla"])
def test_same_convolution_equals_flax_conv_same(impl):
    x = random_batch(3)[..., :1] * jnp.ones((1, 1, 1, 4))
    conv = nnx.Conv(4, 5, (3, 3), padding="SAME", use_bias=False, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(ops.conv2d_same(x, conv.kernel[...], impl), conv(x), rtol=1e-5, atol=1e-5)


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


@pytest.mark.heavy
def test_the_accelerator_config_builds_its_wider_deeper_model():
    config = load_config("vgg_bn_large")
    graphs, state, num_params = train_state.create_train_state(config)
    model = nnx.merge(graphs.model, state.model)
    assert [c.kernel[...].shape[-1] for c in model.convs] == [64, 64, 128, 128, 256, 256]
    assert num_params > 1_000_000 and state.ema is not None
    assert isinstance(train_state.make_optimizer(config), optax.GradientTransformation)
