"""On-device data augmentation, drawn per model and step from its own key."""

import jax
import jax.numpy as jnp

KINDS = ('none', 'crop_flip')


def crop_flip(key, x, padding: int = 4):
  """Random crop after zero padding, and a random horizontal flip.

  key: one PRNG key; x: (B, H, W, C) uint8 -> (B, H, W, C) uint8, each image
  with its own offset and flip.
  """
  b, h, w, c = x.shape
  offset_key, flip_key = jax.random.split(key)
  offsets = jax.random.randint(offset_key, (b, 2), 0, 2 * padding + 1)
  flips = jax.random.bernoulli(flip_key, 0.5, (b,))
  padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  crops = jax.vmap(lambda img, o: jax.lax.dynamic_slice(
      img, (o[0], o[1], 0), (h, w, c)))(padded, offsets)
  return jnp.where(flips[:, None, None, None], crops[:, :, ::-1], crops)


def make(kind: str, padding: int = 4):
  """augment(key, x) for the named kind; 'none' is the identity."""
  if kind == 'none':
    return lambda key, x: x
  if kind == 'crop_flip':
    return lambda key, x: crop_flip(key, x, padding)
  raise ValueError(f'unknown augmentation {kind!r}: expected one of '
                   f'{", ".join(KINDS)}')
