"""On-device data augmentation for training: random horizontal flips, translations and erasing.

Every random number is a counter hash of (key, the image's position in the global batch), as the dropout
masks are (`ops.hash_bits`); the key of global step t is fold_in(augment_root, t). So an augmented batch is a
pure function of (seed, step, index): a resumed run replays it bit for bit, and 1 or 8 devices see the same
images. A flip and a shift are one 0/1 selection matrix per image axis, applied as two small batched matrix
products (zero fill outside the image, exact in float32); erasing is an iota comparison.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from fmnist_jax import ops

# Random erasing (Zhong et al. 2017): erased area as a fraction of the image, and the rectangle's aspect ratio.
ERASE_AREA = (0.02, 0.25)
ERASE_ASPECT = (0.3, 3.3)


@dataclasses.dataclass(frozen=True)
class Augment:
    """What to apply: `flip` (horizontal, p = 1/2), `translate` (a shift of up to that many pixels on each axis,
    zero fill: pad-and-crop), `erase_prob` (the chance of erasing one random rectangle with uniform noise)."""

    flip: bool = False
    translate: int = 0
    erase_prob: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.flip or self.translate > 0 or self.erase_prob > 0


def _uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """float32 uniform in [0, 1) for every element of `shape`, a hash of (key, the element's index)."""
    return (ops.hash_bits(key, shape) >> 8).astype(jnp.float32) * (1.0 / (1 << 24))


def _selection(out_index: jax.Array, size: int) -> jax.Array:
    """(N, size, size) 0/1 matrices, row i selecting source index `out_index[:, i]` (none when out of range)."""
    return (out_index[:, :, None] == jnp.arange(size)[None, None, :]).astype(jnp.float32)


def apply(x: jax.Array, key: jax.Array, augment: Augment) -> jax.Array:
    """Augments a float batch `x` (N, H, W, 1); image n's transform depends only on (key, n)."""
    if not augment.enabled:
        return x
    n, h, w, c = x.shape
    if c != 1:
        raise ValueError(f"augmentation expects one-channel images, got {c} channels")
    u = _uniform(key, (n, 8))  # columns: shift y, shift x, flip, erase?, area, aspect, top, left
    if augment.flip or augment.translate:
        t = augment.translate
        dy = jnp.floor(u[:, 0] * (2 * t + 1)).astype(jnp.int32) - t
        dx = jnp.floor(u[:, 1] * (2 * t + 1)).astype(jnp.int32) - t
        rows = jnp.arange(h)[None, :] + dy[:, None]  # output row i shows source row i + dy
        cols = jnp.arange(w)[None, :] + dx[:, None]
        if augment.flip:
            cols = jnp.where((u[:, 2] < 0.5)[:, None], w - 1 - cols, cols)
        highest = jax.lax.Precision.HIGHEST  # exact copies of the pixels on TPU/GPU too
        x = jnp.einsum("nij,njk->nik", _selection(rows, h), x[..., 0], precision=highest)
        x = jnp.einsum("nik,nlk->nil", x, _selection(cols, w), precision=highest)[..., None]
    if augment.erase_prob > 0:
        area = (ERASE_AREA[0] + u[:, 4] * (ERASE_AREA[1] - ERASE_AREA[0])) * h * w
        log_lo, log_hi = jnp.log(ERASE_ASPECT[0]), jnp.log(ERASE_ASPECT[1])
        aspect = jnp.exp(log_lo + u[:, 5] * (log_hi - log_lo))
        eh = jnp.clip(jnp.round(jnp.sqrt(area * aspect)), 1, h).astype(jnp.int32)
        ew = jnp.clip(jnp.round(jnp.sqrt(area / aspect)), 1, w).astype(jnp.int32)
        top = jnp.floor(u[:, 6] * (h - eh + 1)).astype(jnp.int32)
        left = jnp.floor(u[:, 7] * (w - ew + 1)).astype(jnp.int32)
        r, q = jnp.arange(h)[None, :], jnp.arange(w)[None, :]
        in_rows = (r >= top[:, None]) & (r < (top + eh)[:, None])
        in_cols = (q >= left[:, None]) & (q < (left + ew)[:, None])
        erase = (u[:, 3] < augment.erase_prob)[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :]
        noise = _uniform(jax.random.fold_in(key, 1), (n, h, w))
        x = jnp.where(erase[..., None], noise[..., None], x)
    return x
