import jax
import numpy as np
import optax

from feldman_zhang import config as config_lib
from feldman_zhang import data
from feldman_zhang import errors
from feldman_zhang import evaluation
from feldman_zhang import models
from feldman_zhang import optimizer
from feldman_zhang import resolve
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
  c = resolve.resolve(config_lib.base(), 'cpu')
  c.model.hidden = (8,)
  c.train.update(epochs=1, batch_size=4, lr=1e-30, momentum=0.0)
  model = models.create(c.model, 3)
  x = np.random.default_rng(0).integers(0, 255, (20, 2, 2, 1), np.uint8)
  y = np.arange(20, dtype=np.int32) % 3
  idx = np.arange(10, dtype=np.int32)
  tx = optimizer.make_optimizer(c.train, optimizer.steps_per_epoch(10, 4))
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
  tx = optimizer.make_optimizer(c, 10)
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


def test_step_counts_follow_airbench():
  # airbench: ceil(9.9 x 34) steps of 1024 on 35,000 examples, the last
  # partial batch of each epoch dropped; kept, 35 steps an epoch.
  t = config_lib.base().train
  t.update(epochs=9.9, batch_size=1024, drop_last=True)
  assert optimizer.step_counts(35000, t) == (34, 337)
  t.update(epochs=10, drop_last=False)
  assert optimizer.step_counts(35000, t) == (35, 350)
  assert optimizer.total_steps(0.1, 30) == 3  # 0.1 x 30 is 3.0000000000000004
  assert optimizer.total_steps(0.5, 3) == 2


def test_drop_last_order_is_a_part_of_a_permutation():
  idx = np.arange(100, 110, dtype=np.int32)
  order, weights = train.epoch_order(jax.random.key(3), idx, 4, drop_last=True)
  assert order.shape == weights.shape == (2, 4) and np.all(weights == 1)
  assert len(set(np.asarray(order).ravel())) == 8
  assert set(np.asarray(order).ravel()) <= set(idx)
  # The same permutation as the padded order, cut where it is full.
  padded, w = train.epoch_order(jax.random.key(3), idx, 4)
  np.testing.assert_array_equal(order, padded[:2])
  assert padded.shape == (3, 4) and w.sum() == 10


def test_fractional_epochs_stop_the_last_pass_early():
  # m = 10, batch 4, drop_last: 2 steps an epoch, 1.5 epochs = 3 steps:
  # the same model as train_one driven step by step over the same keys.
  c = resolve.resolve(config_lib.base(), 'cpu')
  c.model.hidden = (8,)
  c.train.update(epochs=1.5, batch_size=4, lr=0.5, drop_last=True,
                 schedule='linear', warmup_epochs=0.5, lookahead=True)
  model = models.create(c.model, 3)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 255, (20, 2, 2, 1), np.uint8)
  y = np.arange(20, dtype=np.int32) % 3
  idx = np.arange(10, dtype=np.int32)
  key = jax.random.key(7)
  (params, _), losses = jax.jit(train.make_trainer(model, c, 10))(key, idx, x,
                                                                  y)
  assert losses.shape == (2,)  # a full pass, then one of its 1 step

  step, tx, storage = train.make_config_step(model, c, 10)
  init_key, order_keys, aug_keys = train.split_model_key(key, 2, 2)
  p0, state = models.init(model, init_key, x)
  carry = (storage.store(p0), state, tx.init(p0))
  ema, seen = (p0, state), []
  for s in range(3):
    e, i = divmod(s, 2)
    order, weights = train.epoch_order(order_keys[e], idx, 4, drop_last=True)
    carry, loss = step(carry, x[order[i]], y[order[i]], weights[i],
                       aug_keys[e, i])
    carry, ema = train._lookahead(carry, ema, s + 1, 3, storage)
    seen.append(loss)
  np.testing.assert_allclose(losses, [np.mean(seen[:2]), seen[2]], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ema[0])):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  # The schedule ends at the last of the 3 steps.
  lr = optimizer._schedule(c.train, 2)
  np.testing.assert_allclose([lr(1), lr(3)], [0.5, 0.0], atol=1e-7)


def test_epochs_field_takes_fractions_through_copies():
  c = config_lib.copy(config_lib.base())
  c.train.epochs = 9.9
  c = config_lib.copy(c)
  c.train.epochs = 3
  assert resolve.resolve(c, 'cpu').train.epochs == 3
  for bad in ('ten', True, 0, -1.5):
    c.train.epochs = bad
    try:
      resolve.validate(c)
    except errors.ConfigError as e:
      assert str(e).startswith('train.epochs must be') and '\n' not in str(e)
    else:
      raise AssertionError(f'epochs={bad!r} was accepted')


def _margin64(logits, y):
  logits = np.asarray(logits, np.float64)
  out = np.empty(logits.shape[:-1])
  for idx in np.ndindex(*logits.shape[:-1]):
    row = logits[idx]
    others = np.delete(row, y[idx])
    top = others.max()
    out[idx] = row[y[idx]] - (top + np.log(np.exp(others - top).sum()))
  return out


def test_margin_is_the_log_odds_of_the_true_class_at_any_scale():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (6, 5, 10)).astype(np.float32)
  logits[0, 0] = [100, -100, 0, 0, 0, 0, 0, 0, 0, 0]   # one class dominant
  logits[0, 1] = [-100, 100, 0, 0, 0, 0, 0, 0, 0, 0]   # the true one, beaten
  logits[1, :] = 100.0                                  # all tied, large
  logits[2, 0] = -100.0
  y = rng.integers(0, 10, (6, 5))
  y[0, 0], y[0, 1] = 0, 0
  got = np.asarray(evaluation.margin(logits, y))
  want = _margin64(logits, y)
  assert got.dtype == np.float32 and np.isfinite(got).all()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  assert abs(got[0, 0] - (100 - np.log(8))) < 1e-4 and got[0, 1] < -199
  # log p_y - log (1 - p_y), where p is representable.
  small = logits[3:]
  p = np.exp(small - small.max(-1, keepdims=True))
  p = np.take_along_axis(p / p.sum(-1, keepdims=True), y[3:, :, None], -1)[..., 0]
  np.testing.assert_allclose(got[3:], np.log(p) - np.log1p(-p), rtol=1e-4,
                             atol=1e-4)


def test_each_view_has_its_margin_and_the_plain_view_matches_p_and_correct(
    tiny_config):
  c = tiny_config
  c.train.epochs = 2
  _, _, run = _setup(c)
  out = run(np.arange(2))
  for part, n in (('train', 1300), ('test', 497)):
    margin = out[f'{part}_margin']
    assert margin.shape == (2, n, evaluation.num_views('none')) == (2, n, 1)
    margin = margin[..., 0]
    # One view: the margin is the averaged logits' log-odds.
    np.testing.assert_allclose(1 / (1 + np.exp(-margin)),
                               out[f'{part}_ptrue'], atol=1e-5)
    # phi > 0 is p_y > 1/2, so the arg max; a wrong arg max has p_y <= 1/2.
    correct = out[f'{part}_correct']
    assert correct[margin > 1e-4].all() and (margin[~correct] < 1e-4).all()
    assert (~correct).any() and (margin < 0).any()


def test_tta_views_each_get_a_margin(tiny_config):
  x = np.random.default_rng(0).integers(0, 255, (4, 8, 8, 1), np.uint8)
  for tta in evaluation.TTA:
    views, weights = evaluation.tta_views(x, tta)
    assert views.shape[0] == len(weights) == evaluation.num_views(tta)
