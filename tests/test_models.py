"""Every model trains under vmap, equals its one-at-a-time self, and splits
into features and head."""

import jax
import ml_collections
import numpy as np
import pytest

from feldman_zhang import config as config_lib
from feldman_zhang import models
from feldman_zhang import precision
from feldman_zhang import resolve
from feldman_zhang import subsets
from feldman_zhang import train

MODELS = {
    'mlp': dict(name='mlp', hidden=(32,)),
    'cnn': dict(name='cnn', channels=(4, 8), dense=16),
    'resnet9': dict(name='resnet9', widths=(4, 8, 8, 16)),
}


def _config(name):
  c = config_lib.base()
  c.model = ml_collections.ConfigDict({**MODELS[name], 'tta': 'none'})
  c.train.update(epochs=2, batch_size=16, lr=0.05, augment='crop_flip')
  c.eval_batch_size = 32
  return resolve.resolve(c, 'cpu')


def _data():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (60, 8, 8, 3), np.uint8)
  y = rng.integers(0, 4, 60).astype(np.int32)
  return x[:48], y[:48], x[48:], y[48:]


@pytest.mark.parametrize('name', sorted(MODELS))
def test_vmapped_equals_one_at_a_time(name):
  c = _config(name)
  x, y, xt, yt = _data()
  fn = train.make_chunk_fn(models.create(c.model, 4), c, 32)
  run = lambda ids: jax.device_get(fn(
      train.model_keys(0, ids), subsets.indices(0, 48, 32, ids), x, y, xt, yt))
  together = run(np.arange(3))
  alone = [run(np.array([k])) for k in range(3)]
  for k in ('train_ptrue', 'test_ptrue', 'loss'):
    np.testing.assert_allclose(
        together[k], np.concatenate([a[k] for a in alone]), atol=1e-4,
        err_msg=f'{name} {k}')
  assert np.all(np.isfinite(together['loss']))
  assert not np.allclose(together['loss'][0], together['loss'][1])


@pytest.mark.parametrize('name', sorted(MODELS))
def test_features_then_head_is_the_model(name):
  c = _config(name)
  model = models.create(c.model, 4)
  x = _data()[0][:5]
  params, state = models.init(model, jax.random.key(0), x)
  variables = {'params': params, **state}
  logits = model.apply(variables, x)
  feats = model.apply(variables, x, method='features')
  assert feats.ndim == 2 and feats.shape[0] == 5
  head = model.apply(variables, feats, method=lambda m, f: m.head(f))
  scale = getattr(model, 'head_scale', 1.0)
  np.testing.assert_allclose(logits, head * scale, rtol=1e-5, atol=1e-6)
  assert set(state) == ({'batch_stats'} if name == 'resnet9' else set())


def test_bf16_compute_keeps_f32_params():
  c = _config('resnet9')
  model = models.create(c.model, 4, dtype=precision.compute_dtype('bfloat16'))
  x = _data()[0][:5]
  params, _ = models.init(model, jax.random.key(0), x)
  assert {p.dtype for p in jax.tree.leaves(params)} == {np.dtype('float32')}
  f32 = models.create(c.model, 4)
  a = model.apply(
      {'params': params, **models.init(model, jax.random.key(0), x)[1]}, x)
  b = f32.apply(
      {'params': params, **models.init(f32, jax.random.key(0), x)[1]}, x)
  assert a.dtype == np.float32
  np.testing.assert_allclose(a, b, atol=0.05)  # bf16 rounding, same model
  assert not np.array_equal(a, b)


def test_batch_norm_statistics_are_trained():
  c = _config('resnet9')
  x, y, _, _ = _data()
  model = models.create(c.model, 4)
  train_one = train.make_trainer(model, c, 32)
  (params, state), _ = jax.jit(train_one)(
      jax.random.key(0), np.arange(32, dtype=np.int32), x, y)
  _, state0 = models.init(model, jax.random.key(0), x)
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), state, state0)
  assert max(jax.tree.leaves(moved)) > 1e-3


def test_linear_takes_images_and_features():
  # On uint8 images: logistic regression of the MLP's [0, 1] pixels; on
  # float features (the last-layer heads): a Dense layer as they are.
  model = models.create(ml_collections.ConfigDict(dict(name='linear')), 3)
  x = np.random.default_rng(0).integers(0, 256, (4, 5, 5, 1), np.uint8)
  params, _ = models.init(model, jax.random.key(0), x)
  w, b = params['head']['kernel'], params['head']['bias']
  np.testing.assert_allclose(model.apply({'params': params}, x),
                             (x.reshape(4, -1) / 255) @ w + b, rtol=1e-5)
  feats = x.reshape(4, -1).astype(np.float32)
  np.testing.assert_allclose(model.apply({'params': params}, feats),
                             feats @ w + b, rtol=1e-5)


@pytest.mark.parametrize('name', ['cnn', 'resnet9'])
def test_loop_friendly_convolutions_change_only_the_gradients_float_order(
    name):
  # On the CPU (conv_weight_grad resolved to matmul) the CNN and ResNet-9
  # take airbench.conv_same_loop's gradients: the same parameters and
  # forward values, gradients up to float summation order.
  assert _config(name).model.conv_weight_grad == 'matmul'
  x = _data()[0][:6]
  out = {}
  for grad in ('xla', 'matmul'):
    c = ml_collections.ConfigDict({**MODELS[name], 'conv_weight_grad': grad})
    model = models.create(c, 4)
    assert model.loop_friendly == (grad == 'matmul')
    params, state = models.init(model, jax.random.key(0), x)

    def loss(p, model=model, state=state):
      return jax.numpy.sum(models.apply(model, p, state, x, True)[0] ** 2)

    # Every convolution takes conv_same_loop's gradient and every pool
    # airbench.max_pool_2x2's, or none does.
    convs = len(MODELS[name].get('channels', ())) or 8  # ResNet-9's 8
    pools = convs if name == 'cnn' else 3  # a pool after each CNN conv
    calls = str(jax.make_jaxpr(loss)(params)).count('custom_vjp_call')
    assert calls == (convs + pools if grad == 'matmul' else 0), (grad, calls)
    out[grad] = (params, models.apply(model, params, state, x, False)[0],
                 jax.grad(loss)(params))
  (p_xla, y_xla, g_xla), (p_mm, y_mm, g_mm) = out['xla'], out['matmul']
  assert jax.tree.structure(p_xla) == jax.tree.structure(p_mm)
  for a, b in zip(jax.tree.leaves(p_xla), jax.tree.leaves(p_mm)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(y_xla, y_mm)
  for a, b in zip(jax.tree.leaves(g_xla), jax.tree.leaves(g_mm)):
    assert np.any(a != 0)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


def test_the_loop_friendly_convolution_refuses_what_it_does_not_compute():
  conv = models.conv_3x3(4, True)
  with pytest.raises(ValueError, match="stride-1 'SAME'"):
    flax_conv = conv.clone(strides=(2, 2))
    flax_conv.init(jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32))
