import jax
import numpy as np
import optax

from feldman_zhang import config as config_lib
from feldman_zhang import data
from feldman_zhang import models
from feldman_zhang import subsets
from feldman_zhang import train


def _setup(config):
  ds = data.load('digits')
  m = subsets.subset_size(ds.num_train, config.subset_ratio)
  fn = train.make_chunk_fn(models.create(config.model, ds.num_classes),
                           config, m)
  arrays = (ds.x_train, ds.y_train, ds.x_test, ds.y_test)
  return ds, m, lambda ids: jax.device_get(fn(
      train.model_keys(config.seed, ids),
      subsets.indices(config.seed, ds.num_train, m, ids), *arrays))


def _assert_same_models(a, b):
  for k in ('train_ptrue', 'test_ptrue', 'loss'):
    np.testing.assert_allclose(a[k], b[k], atol=2e-5, err_msg=k)
  for k in ('train_correct', 'test_correct'):
    # A prediction may flip only where two classes tie to float precision.
    assert (a[k] != b[k]).mean() < 1e-3, k


def test_vmapped_equals_one_at_a_time(tiny_config):
  _, _, run = _setup(tiny_config)
  together = run(np.arange(3))
  alone = [run(np.array([k])) for k in range(3)]
  alone = {k: np.concatenate([a[k] for a in alone]) for k in together}
  _assert_same_models(together, alone)


def test_model_does_not_depend_on_its_chunk(tiny_config):
  _, _, run = _setup(tiny_config)
  a, b = run(np.arange(4, 7)), run(np.arange(5, 8))
  _assert_same_models({k: v[1:] for k, v in a.items()},
                      {k: v[:2] for k, v in b.items()})


def test_models_learn_and_differ(tiny_config):
  ds, m, run = _setup(tiny_config)
  out = run(np.arange(3))
  assert out['train_correct'].shape == (3, ds.num_train)
  assert out['test_correct'].shape == (3, ds.num_test)
  assert out['loss'].shape == (3, tiny_config.train.epochs)
  assert np.all(out['loss'][:, -1] < 0.5 * out['loss'][:, 0])
  assert np.all(out['test_correct'].mean(1) > 0.85)
  # Own subset (fitted) beats held-out examples.
  masks = subsets.masks(tiny_config.seed, ds.num_train, m, range(3))
  for k in range(3):
    assert (out['train_correct'][k][masks[k]].mean() >
            out['train_correct'][k][~masks[k]].mean())
  assert not np.allclose(out['test_ptrue'][0], out['test_ptrue'][1])
  # A true-label probability above 1/2 is the arg max.
  assert np.all(out['train_correct'][out['train_ptrue'] > 0.5])
  assert np.all(out['test_correct'][out['test_ptrue'] > 0.5])


def test_partial_last_batch_counts_once():
  # m = 10, batch 4: steps of 4, 4, 2 real examples; the padded slots must
  # weigh nothing, so a model trained with batch 4 on 10 examples whose
  # lr is 0 reports the true mean loss of its 10 examples.
  c = config_lib.resolve(config_lib.base(), 'cpu')
  c.model.hidden = (8,)
  c.train.update(epochs=1, batch_size=4, lr=1e-30, momentum=0.0)
  model = models.create(c.model, 3)
  x = np.random.default_rng(0).integers(0, 255, (20, 2, 2, 1), np.uint8)
  y = np.arange(20, dtype=np.int32) % 3
  idx = np.arange(10, dtype=np.int32)
  tx = train.make_optimizer(c.train, train.steps_per_epoch(10, 4))
  train_one = train.make_train_one(model, tx, m=10, batch_size=4, epochs=1)
  (params, _), losses = jax.jit(train_one)(jax.random.key(0), idx, x, y)
  logits = model.apply({'params': params}, x[:10])
  want = optax.softmax_cross_entropy_with_integer_labels(logits, y[:10]).mean()
  np.testing.assert_allclose(losses[0], want, rtol=1e-5)


def test_map_over_models_equals_vmap(tiny_config):
  _, _, run = _setup(tiny_config)
  vmapped = run(np.arange(3))
  tiny_config.vectorize = 'map'
  ds, m, run = _setup(tiny_config)
  _assert_same_models(vmapped, run(np.arange(3)))
  # ... and map really runs the models one after another: the per-model
  # program sits inside a loop over the 3 models, not batched by vmap.
  def top_level_loops(vectorize):
    tiny_config.vectorize = vectorize
    fn = train.make_chunk_fn(models.create(tiny_config.model, ds.num_classes),
                             tiny_config, m)
    ids = np.arange(3)
    jaxpr = jax.make_jaxpr(fn)(
        train.model_keys(0, ids), subsets.indices(0, ds.num_train, m, ids),
        ds.x_train, ds.y_train, ds.x_test, ds.y_test)
    inner = jaxpr.eqns[0].params['jaxpr'].eqns  # inside the jit
    return [e.params['length'] for e in inner if e.primitive.name == 'scan']
  assert 3 in top_level_loops('map') and 3 not in top_level_loops('vmap')


def test_bf16_momentum_is_stored_in_bf16_and_trains_alike(tiny_config):
  c = tiny_config.train
  c.momentum_dtype = 'bfloat16'
  tx = train.make_optimizer(c, 10)
  params = {'w': np.ones((3, 2), np.float32)}
  dtypes = {x.dtype for x in jax.tree.leaves(tx.init(params))
            if getattr(x, 'ndim', 0)}
  assert dtypes == {np.dtype(jax.numpy.bfloat16)}
  _, _, run = _setup(tiny_config)
  bf16 = run(np.arange(2))
  tiny_config.train.momentum_dtype = 'float32'
  _, _, run = _setup(tiny_config)
  f32 = run(np.arange(2))
  assert not np.array_equal(bf16['loss'], f32['loss'])  # the switch acts
  np.testing.assert_allclose(bf16['loss'], f32['loss'], rtol=0.05)


def test_epoch_order_of_a_subset_smaller_than_its_padding():
  # m = 13, B = 32: 19 padding slots, more than the subset holds.
  idx = np.arange(100, 113, dtype=np.int32)
  order, weights = train.epoch_order(jax.random.key(0), idx, 32)
  assert order.shape == weights.shape == (1, 32)
  real = np.asarray(order)[np.asarray(weights) == 1]
  np.testing.assert_array_equal(np.sort(real), idx)  # each example once
  assert np.isin(np.asarray(order), idx).all()       # padding from the subset
