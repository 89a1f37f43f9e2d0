"""The airbench recipe: per-model whitening on the model's own subset only,
its optimizer groups, alternating flips, lookahead, test-time augmentation,
and a tiny version that learns real CIFAR-10 images."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT
from feldman_zhang import airbench
from feldman_zhang import augment
from feldman_zhang import config as config_lib
from feldman_zhang import errors
from feldman_zhang import evaluation
from feldman_zhang import models
from feldman_zhang import optimizer
from feldman_zhang import pipeline
from feldman_zhang import identity as identity_lib
from feldman_zhang import resolve
from feldman_zhang import subsets
from feldman_zhang import train

# CIFAR-10 with its original pixels, as PNG tiles (its README.md).
CIFAR_LOSSLESS = os.path.join(ROOT, '..', 'shared', 'datasets',
                              'cifar10_lossless')


def tiny_config(epochs=1):
  """configs/cifar10_airbench.py, narrow and short."""
  c = config_lib.from_file(os.path.join(ROOT, 'configs',
                                        'cifar10_airbench.py'))
  c.model.widths = (4, 8, 8)
  c.num_models = 2
  c.models_per_device = 2
  c.cpu_models_per_device = 0  # two models a call on the CPU too
  c.eval_batch_size = 50
  c.train.update(epochs=epochs, batch_size=32, warmup_epochs=0.5 * epochs,
                 whiten_bias_epochs=min(epochs, 3))
  return resolve.resolve(c)  # the trainer takes resolved configs


def test_shipped_recipe_counts_airbench_steps():
  # airbench94 on 70% subsets: 34 steps an epoch (last partial batch
  # dropped), ceil(9.9 x 34) = 337 in all, the lr's peak at int(0.23 x 337),
  # the whitening bias trained ceil(3 x 34) steps.
  c = config_lib.from_file(os.path.join(ROOT, 'configs',
                                        'cifar10_airbench.py')).train
  steps, total = optimizer.step_counts(35000, c)
  assert (steps, total) == (34, 337)
  assert int(c.warmup_epochs * steps) == int(0.23 * total) == 77
  assert int(c.whiten_bias_epochs * steps) == 102
  lr = optimizer._schedule(c, steps)
  np.testing.assert_allclose([lr(0), lr(77), lr(337)],
                             np.array([0.2, 1.0, 0.07]) * c.lr, rtol=1e-6)


def random_data(n=100, n_test=20, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, (n + n_test, 32, 32, 3), np.uint8)
  y = rng.integers(0, 10, n + n_test).astype(np.int32)
  return x[:n], y[:n], x[n:], y[n:]


def test_whitening_whitens_the_subset_and_sees_nothing_else():
  x, _, _, _ = random_data(200)
  # Correlated channels, so the whitening has something to undo.
  x = np.clip(x * 0.3 + x[..., :1] * 0.7, 0, 255).astype(np.uint8)
  idx = jnp.asarray(subsets.indices(0, 200, 140, [0])[0])
  kernel = airbench.fit_whitening(x, idx)
  assert kernel.shape == (2, 2, 3, 24)
  # The first 12 filters whiten the subset's patches: second moment ~ I
  # (up to eps, which shrinks the smallest directions a little).
  h = jax.lax.conv_general_dilated(
      airbench.preprocess_cifar(x[np.asarray(idx)]), kernel[..., :12], (1, 1),
      'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')).reshape(-1, 12)
  second = np.asarray(h.T @ h) / len(h)
  np.testing.assert_allclose(np.diag(second), 1, atol=0.05)
  np.testing.assert_allclose(second - np.diag(np.diag(second)), 0, atol=1e-3)
  np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])

  held_out = np.setdiff1d(np.arange(200), np.asarray(idx))
  x2 = x.copy()
  x2[held_out] = 255 - x2[held_out]
  np.testing.assert_array_equal(airbench.fit_whitening(x2, idx), kernel)
  x3 = x.copy()
  x3[np.asarray(idx)[0]] = 0
  assert not np.array_equal(airbench.fit_whitening(x3, idx), kernel)
  other = jnp.asarray(subsets.indices(0, 200, 140, [1])[0])
  assert not np.array_equal(airbench.fit_whitening(x, other), kernel)


def test_a_model_never_sees_a_held_out_example():
  """Training on x and on x with every held-out image and label changed
  gives bit-identical models: whitening, BatchNorm statistics, data order
  and augmentation all read the subset alone."""
  c = tiny_config(epochs=2)
  x, y, _, _ = random_data(100)
  model = models.create(c.model, 10)
  m = 70
  train_one = jax.jit(train.make_trainer(model, c, m))
  idx = subsets.indices(0, 100, m, [0])[0]
  key = train.model_keys(0, [0])[0]
  held_out = np.setdiff1d(np.arange(100), idx)
  x2, y2 = x.copy(), y.copy()
  x2[held_out], y2[held_out] = 255 - x2[held_out], (y2[held_out] + 1) % 10
  (p1, s1), l1 = train_one(key, idx, x, y)
  (p2, s2), l2 = train_one(key, idx, x2, y2)
  for a, b in zip(jax.tree.leaves((p1, s1, l1)), jax.tree.leaves((p2, s2, l2))):
    np.testing.assert_array_equal(a, b)
  # The model's whitening is its subset's (jitted apart: last-ulp sums).
  np.testing.assert_allclose(s1['whiten']['kernel'],
                             airbench.fit_whitening(x, idx), rtol=1e-5,
                             atol=1e-6)


def test_chunk_is_deterministic_and_tta_changes_the_evaluation():
  c = tiny_config()
  x, y, xt, yt = random_data()
  model = models.create(c.model, 10)
  fn = train.make_chunk_fn(model, c, 70)
  idx = subsets.indices(0, 100, 70, [0, 1])
  keys = train.model_keys(0, [0, 1])
  a = jax.device_get(fn(keys, idx, x, y, xt, yt))
  b = jax.device_get(fn(keys, idx, x, y, xt, yt))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  c.model.tta = 'none'
  plain = jax.device_get(train.make_chunk_fn(model, c, 70)(
      keys, idx, x, y, xt, yt))
  np.testing.assert_array_equal(plain['loss'], a['loss'])  # same training
  assert not np.array_equal(plain['train_ptrue'], a['train_ptrue'])


def test_tta_views_average_as_airbench():
  x = np.arange(2 * 4 * 4 * 1, dtype=np.uint8).reshape(2, 4, 4, 1)
  views, w = evaluation.tta_views(jnp.asarray(x), 'mirror_translate')
  assert views.shape == (6, 2, 4, 4, 1) and float(w.sum()) == 1
  np.testing.assert_array_equal(views[1], x[:, :, ::-1])
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
  np.testing.assert_array_equal(views[2], padded[:, :4, :4])
  np.testing.assert_array_equal(views[5], padded[:, 2:, 2:][:, :, ::-1])
  views, w = evaluation.tta_views(jnp.asarray(x), 'mirror')
  assert views.shape[0] == 2 and list(w) == [0.5, 0.5]


def test_alternating_flips_show_each_example_both_ways():
  bits = augment.flip_bits(jax.random.key(3), 50)
  idx = jnp.arange(50)
  e0, e1, e2 = (np.asarray(augment.alternating_flips(bits, idx, e))
                for e in range(3))
  np.testing.assert_array_equal(e0, ~e1)
  np.testing.assert_array_equal(e0, e2)
  assert 10 < e0.sum() < 40


def test_optimizer_groups():
  c = tiny_config(epochs=2)
  model = models.create(c.model, 10)
  x, y, _, _ = random_data()
  params, state = models.init(model, jax.random.key(0), x)
  labels = optimizer.param_groups(params)
  flat = {'/'.join(getattr(k, 'key', str(k)) for k in path): v
          for path, v in jax.tree_util.tree_leaves_with_path(labels)}
  assert flat['whiten_bias'] == 'whiten_bias'
  assert flat['head/kernel'] == 'other'
  assert {v for k, v in flat.items() if 'BatchNorm' in k} == {'norm_bias'}
  # Constant lr, no momentum, no decay: the update is -lr x scale x grad.
  c.train.update(schedule='constant', momentum=0.0, weight_decay=0.0,
                 whiten_bias_epochs=1)
  tx = optimizer.make_optimizer(c.train, steps=2)
  grads = jax.tree.map(jnp.ones_like, params)
  opt = tx.init(params)
  for step in range(4):
    updates, opt = tx.update(grads, opt, params)
    upd = {'/'.join(getattr(k, 'key', str(k)) for k in path): v
           for path, v in jax.tree_util.tree_leaves_with_path(updates)}
    np.testing.assert_allclose(upd['head/kernel'], -c.train.lr)
    bn = [v for k, v in upd.items() if 'BatchNorm' in k]
    np.testing.assert_allclose(bn[0], -c.train.lr * c.train.bias_lr_scale)
    # The whitening bias trains in epoch 0 (steps 0, 1) only.
    np.testing.assert_allclose(upd['whiten_bias'],
                               -c.train.lr if step < 2 else 0.0)


def test_lookahead_matches_airbench():
  storage = train.precision.storage('float32', None)
  params, ema = {'w': jnp.array(2.0)}, ({'w': jnp.array(1.0)}, {})
  carry = (params, {}, ())
  same_carry, same_ema = train._lookahead(carry, ema, 4, 10, storage)
  assert float(same_carry[0]['w']) == 2.0 and float(same_ema[0]['w']) == 1.0
  new_carry, new_ema = train._lookahead(carry, ema, 5, 10, storage)
  decay = 0.95**5 * 0.5**3
  np.testing.assert_allclose(float(new_ema[0]['w']), 1 + (1 - decay), rtol=1e-6)
  assert float(new_carry[0]['w']) == float(new_ema[0]['w'])


def test_wrong_image_shape_is_refused_before_the_workdir(tmp_path):
  c = tiny_config()
  c.data.source = 'random:28x28x1:10:100:20'
  workdir = tmp_path / 'run'
  with pytest.raises(errors.ConfigError, match=r'takes images of shape'):
    pipeline.run(c, str(workdir))
  assert not workdir.exists()


def test_tta_is_part_of_the_run_identity(tmp_path):
  c = tiny_config()
  c.data.source = 'random:32x32x3:10:100:20'
  workdir = str(tmp_path / 'run')
  pipeline.run(c, workdir)
  c.model.tta = 'mirror'
  with pytest.raises(identity_lib.IdentityError, match='model.tta'):
    pipeline.run(c, workdir)


def _cifar_slice(n_train, n_test):
  """The first images of each class of the lossless copy: read from its
  first training tile and its test tile, not the whole set decoded."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  labels = np.load(os.path.join(CIFAR_LOSSLESS, 'labels.npz'))

  def first(png, y, per_class):
    # 100 x 100 tiles of 32 x 32: image 100 r + c at tile row r, column c.
    tiles = np.asarray(Image.open(os.path.join(CIFAR_LOSSLESS, png))
                       .convert('RGB'))
    x = tiles.reshape(100, 32, 100, 32, 3).transpose(0, 2, 1, 3, 4).reshape(
        10000, 32, 32, 3)
    y = y[:10000]
    idx = np.concatenate([np.flatnonzero(y == k)[:per_class]
                          for k in range(10)])
    return x[idx], y[idx].astype(np.int32)

  return (first('train_0.png', labels['y_train'], n_train // 10) +
          first('test.png', labels['y_test'], n_test // 10))


@pytest.mark.slow  # 27 s on 2 busy CPU cores, nearly all of it training
@pytest.mark.skipif(not os.path.isdir(CIFAR_LOSSLESS),
                    reason='no lossless CIFAR-10 copy beside the checkout '
                    '(../shared/datasets/cifar10_lossless)')
def test_tiny_airbench_learns_real_cifar():
  c = tiny_config(epochs=4)
  c.model.widths = (16, 32, 32)
  c.train.batch_size = 64
  x, y, xt, yt = _cifar_slice(1000, 500)
  model = models.create(c.model, 10)
  m = 700
  fn = train.make_chunk_fn(model, c, m)
  out = jax.device_get(fn(train.model_keys(0, [0]),
                          subsets.indices(0, 1000, m, [0]), x, y, xt, yt))
  acc = out['test_correct'].mean()
  assert acc > 0.25, acc  # chance is 0.1


def test_loop_friendly_conv_has_xla_gradients():
  x = jax.random.normal(jax.random.key(0), (4, 9, 9, 5))
  w = jax.random.normal(jax.random.key(1), (3, 3, 5, 7)) * 0.1
  grads = lambda conv: jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))),
                                argnums=(0, 1))(x, w)
  want, got = grads(airbench._conv_same), grads(airbench.conv_same_loop)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(airbench.conv_same_loop(x, w),
                                airbench._conv_same(x, w))


@pytest.mark.parametrize('shape', [(3, 31, 31, 5), (2, 8, 8, 4),
                                   (2, 7, 6, 3)])
def test_max_pool_2x2_is_nn_max_pool_bit_for_bit(shape):
  # Values in {0, 1, 2}: most windows hold tied maxima, where the cotangent
  # must go where XLA's select_and_scatter puts it (the first, row-major).
  x = jax.random.randint(jax.random.key(0), shape, 0, 3).astype(jnp.float32)
  flax_pool = lambda x: nn.max_pool(x, (2, 2), (2, 2))
  want, want_vjp = jax.vjp(flax_pool, x)
  got, got_vjp = jax.vjp(airbench.max_pool_2x2, x)
  np.testing.assert_array_equal(got, want)
  dys = jax.random.normal(jax.random.key(1), (2,) + want.shape)
  grads = lambda vjp: jax.vmap(lambda dy: vjp(dy)[0])(dys)
  np.testing.assert_array_equal(grads(got_vjp), grads(want_vjp))
  assert np.any(grads(got_vjp) == 0) and np.any(grads(got_vjp) != 0)


def test_loop_friendly_airbench_has_nn_max_pools_gradient(monkeypatch):
  """The CPU's airbench (loop_friendly) pools with max_pool_2x2: its
  gradients are those of the same network pooled with nn.max_pool, bit
  for bit, on images whose saturated regions tie."""
  x, y, _, _ = random_data(8)
  x = np.array(x)
  x[:, 8:24, 8:24] = 255  # a constant square: tied maxima
  model = airbench.Airbench(widths=(8, 16, 16), loop_friendly=True)
  params, state = models.init(model, jax.random.key(0), x)
  state = {**state, 'whiten': jax.tree.map(
      lambda a: jax.random.normal(jax.random.key(2), a.shape), state['whiten'])}

  def grads():
    def loss(p):
      logits = models.apply(model, p, state, x, True)[0]
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, y).mean()
    return jax.grad(loss)(params)

  got = grads()
  monkeypatch.setattr(airbench, 'max_pool_2x2',
                      lambda x: nn.max_pool(x, (2, 2), (2, 2)))
  want = grads()
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.optimized
def test_training_in_segments_equals_one_call():
  """make_config_segments cut at pass boundaries, the carry brought to the
  host between calls (as a saved and resumed training does), gives the very
  model and losses of make_trainer's one call: whitening, lookahead,
  alternating flips and an early-stopped last pass included."""
  c = tiny_config(epochs=3)
  c.unlock()
  c.train.epochs = 2.5
  c.lock()
  x, y, _, _ = random_data(100)
  model = models.create(c.model, 10)
  m = 70
  idx = subsets.indices(0, 100, m, [0])[0]
  key = train.model_keys(0, [0])[0]
  whole, losses = jax.jit(train.make_trainer(model, c, m))(key, idx, x, y)
  seg = train.make_config_segments(model, c, m)
  assert seg.passes == 3
  carry = jax.device_get(jax.jit(seg.start)(key, idx, x))
  pieces = []
  # Passes 0 and 1 by one program (first traced), the early-stopped pass 2
  # by its own (first static).
  run = jax.jit(seg.run, static_argnums=6)
  for first in (0, 1):
    carry, part = jax.device_get(run(carry, key, idx, x, y, np.int32(first),
                                     1))
    pieces.append(part)
  run_last = jax.jit(seg.run, static_argnums=(5, 6))
  carry, part = jax.device_get(run_last(carry, key, idx, x, y, 2, 1))
  pieces.append(part)
  np.testing.assert_array_equal(np.concatenate(pieces), losses)
  for a, b in zip(jax.tree.leaves(jax.jit(seg.finish)(carry)),
                  jax.tree.leaves(whole)):
    np.testing.assert_array_equal(a, b)
