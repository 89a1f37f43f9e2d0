"""On-device data augmentation, drawn per model and step from its own key."""

import jax
import jax.numpy as jnp

# crop_flip: random crop of the zero-padded image and a random flip, drawn
# anew at every step. flip_translate: airbench's derandomized scheme, a
# random translate of the reflect-padded image at every step and an
# alternating flip: each example of a model has one random flip bit, used
# as drawn in even epochs and inverted in odd ones, so every example is
# seen both ways every two epochs (`alternating_flips`).
KINDS = ('none', 'crop_flip', 'flip_translate')


def _shift(key, x, padding: int, mode: str):
  """Each image of x (B, H, W, C) cut at its own random offset out of the
  image padded by `padding` pixels (`mode` as jnp.pad's)."""
  b, h, w, c = x.shape
  offsets = jax.random.randint(key, (b, 2), 0, 2 * padding + 1)
  padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                   mode=mode)
  return jax.vmap(lambda img, o: jax.lax.dynamic_slice(
      img, (o[0], o[1], 0), (h, w, c)))(padded, offsets)


def crop_flip(key, x, padding: int = 4):
  """Random crop after zero padding, and a random horizontal flip.

  key: one PRNG key; x: (B, H, W, C) uint8 -> (B, H, W, C) uint8, each image
  with its own offset and flip.
  """
  offset_key, flip_key = jax.random.split(key)
  crops = _shift(offset_key, x, padding, 'constant')
  return flip(crops, jax.random.bernoulli(flip_key, 0.5, (x.shape[0],)))


def translate(key, x, padding: int = 2):
  """airbench's translate: a random offset in [-padding, padding]^2 of the
  reflect-padded image (no flip: see alternating_flips)."""
  return _shift(key, x, padding, 'reflect')


def flip_bits(key, n: int):
  """(n,) bool: one model's flip bit for every training example."""
  return jax.random.bernoulli(key, 0.5, (n,))


def alternating_flips(bits, bidx, epoch):
  """(B,) bool: whether the examples bidx are flipped in `epoch`."""
  return jnp.logical_xor(bits[bidx], epoch % 2 == 1)


def flip(x, flips):
  """x (B, H, W, C) with the images where flips (B,) is set mirrored."""
  return jnp.where(flips[:, None, None, None], x[:, :, ::-1], x)


def make(kind: str, padding: int = 4):
  """augment(key, x) for the named kind's per-step draw; 'none' is the
  identity. flip_translate's flips are the trainer's (alternating_flips)."""
  if kind == 'none':
    return lambda key, x: x
  if kind == 'crop_flip':
    return lambda key, x: crop_flip(key, x, padding)
  if kind == 'flip_translate':
    return lambda key, x: translate(key, x, padding)
  raise ValueError(f'unknown augmentation {kind!r}: expected one of '
                   f'{", ".join(KINDS)}')
