import jax
import numpy as np

from feldman_zhang import augment


def _images():
  return np.random.default_rng(0).integers(0, 256, (8, 6, 6, 3), np.uint8)


def test_crop_flip_is_a_shifted_maybe_flipped_crop():
  x = _images()
  out = np.asarray(augment.crop_flip(jax.random.key(0), x, padding=2))
  assert out.shape == x.shape and out.dtype == np.uint8
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
  for img, src in zip(out, padded):
    found = any(
        np.array_equal(img, cand)
        for dy in range(5) for dx in range(5)
        for crop in [src[dy:dy + 6, dx:dx + 6]]
        for cand in (crop, crop[:, ::-1]))
    assert found


def test_reproducible_and_differs_by_key():
  x = _images()
  a = augment.crop_flip(jax.random.key(1), x)
  np.testing.assert_array_equal(a, augment.crop_flip(jax.random.key(1), x))
  assert not np.array_equal(a, augment.crop_flip(jax.random.key(2), x))
  # Different images of one batch get different offsets or flips.
  same = np.stack([x[0]] * 8)
  outs = np.asarray(augment.crop_flip(jax.random.key(3), same))
  assert len({o.tobytes() for o in outs}) > 1


def test_models_and_steps_draw_different_augmentations():
  """The trainer's keys: each (model, epoch, step) augments differently,
  and the same seed gives the same augmentations."""
  from feldman_zhang import train
  x = _images()

  def batches(seed):
    out = []
    for key in train.model_keys(seed, [0, 1]):
      _, _, aug_keys = train.split_model_key(key, epochs=2, steps=3)
      assert aug_keys.shape == (2, 3)
      out += [np.asarray(augment.crop_flip(k, x)) for k in aug_keys.reshape(-1)]
    return out

  first = batches(0)
  assert len({b.tobytes() for b in first}) == len(first) == 12
  for a, b in zip(first, batches(0)):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(first[0], batches(1)[0])
