"""Split parameter storage: exact f32 master weights, a bf16 compute half."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from feldman_zhang import chunks
from feldman_zhang import config as config_lib
from feldman_zhang import data
from feldman_zhang import errors
from feldman_zhang import models
from feldman_zhang import optimizer
from feldman_zhang import pipeline
from feldman_zhang import precision
from feldman_zhang import identity as identity_lib
from feldman_zhang import resolve
from feldman_zhang import store
from feldman_zhang import subsets
from feldman_zhang import train


def _bits(x):
  return np.asarray(x).view(np.uint32)


def _patterns():
  """Random bit patterns of every kind (NaNs, infs, subnormals included)
  and the edges: zeros, exact ties, the largest finite values."""
  rng = np.random.default_rng(0)
  bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
  edges = np.array([0, 0x80000000, 0x3F808000, 0x3F818000, 0xBF808000,
                    0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0x7FC00000,
                    0x7FFFFFFF, 0xFFFFFFFF, 0x00000001, 0x00008000,
                    0x7F7F8000, 0x7F7F7FFF], np.uint32)
  return np.concatenate([bits, edges]).view(np.float32)


def test_split_join_round_trip_is_exact_for_every_bit_pattern():
  w = _patterns()
  hi, lo = jax.jit(precision.split_f32)(w)
  assert hi.dtype == jnp.bfloat16 and lo.dtype == jnp.int16
  back = jax.jit(precision.join_f32)(hi, lo)
  nan = np.isnan(w)
  np.testing.assert_array_equal(_bits(back)[~nan], _bits(w)[~nan])
  # NaNs come back NaN (the canonical one), and so does their compute half:
  # a NaN with a high payload (the GPU's 0x7FFFFFFF) must not round to 0.
  assert nan.sum() > 2 and np.isnan(back[nan]).all()
  assert np.isnan(np.asarray(hi[nan], np.float32)).all()


def test_hi_is_the_bf16_cast_but_for_ties():
  w = _patterns()
  w = w[np.isfinite(w) & (np.abs(w) < 3e38)]
  hi = np.asarray(precision.split_f32(w)[0]).astype(np.float32)
  cast = np.asarray(jnp.asarray(w).astype(jnp.bfloat16)).astype(np.float32)
  ties = (_bits(w) & 0xFFFF) == 0x8000
  np.testing.assert_array_equal(_bits(hi[~ties]), _bits(cast[~ties]))
  # A tie goes away from zero: |hi| >= |w|, where the cast goes to even.
  assert ties.sum() >= 3 and np.all(np.abs(hi[ties]) >= np.abs(w[ties]))
  assert np.any(hi[ties] != cast[ties])


def _three_steps(storage_name, params, grads_fn):
  """Three SGD-momentum steps in the given storage; returns f32 params."""
  c = config_lib.base().train
  c.update(momentum_dtype='bfloat16', weight_decay=5e-4, schedule='cosine')
  tx = optimizer.make_optimizer(c, 10)
  storage = precision.storage(storage_name, jnp.bfloat16)
  stored, opt = storage.store(params), tx.init(params)
  for _ in range(3):
    view = storage.view(stored)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads_fn(view),
                         storage.master(stored))
    updates, opt = tx.update(grads, opt, storage.master(stored))
    stored = storage.store(optax.apply_updates(storage.master(stored),
                                               updates))
  return storage.master(stored)


@pytest.mark.optimized
def test_split_update_gives_the_f32_master_weights_bit_for_bit():
  rng = np.random.default_rng(1)
  params = {'w': rng.normal(size=(64, 32)).astype(np.float32),
            'b': rng.normal(size=(32,)).astype(np.float32)}
  # A gradient that depends on the compute copy only through its values:
  # away from ties, both storages see the same bf16 weights.
  grads_fn = lambda view: jax.tree.map(
      lambda p: jnp.sin(p.astype(jnp.float32)).astype(jnp.bfloat16), view)

  def cast_view(p):
    return jax.tree.map(lambda x: x.astype(jnp.bfloat16), p)

  split = _three_steps('split', params, grads_fn)
  plain = _three_steps('float32', params,
                       lambda view: grads_fn(cast_view(view)))
  for k in params:
    assert not np.array_equal(split[k], params[k])  # it trained
    np.testing.assert_array_equal(_bits(split[k]), _bits(plain[k]))


@pytest.mark.optimized
def test_split_storage_trains_the_same_models(tiny_config):
  ds = data.load('digits')
  c = tiny_config
  c.train.update(compute_dtype='bfloat16', param_storage='float32')
  m = subsets.subset_size(ds.num_train, c.subset_ratio)
  ids = np.arange(2)

  def run():
    fn = train.make_chunk_fn(models.create(c.model, ds.num_classes,
                                           jnp.bfloat16), c, m)
    return jax.device_get(fn(train.model_keys(c.seed, ids),
                             subsets.indices(c.seed, ds.num_train, m, ids),
                             ds.x_train, ds.y_train, ds.x_test, ds.y_test))

  plain = run()
  c.train.param_storage = 'split'
  split = run()
  assert not np.array_equal(split['loss'], plain['loss'])  # the switch acts
  # Only the rounding of ties differs, so the models differ like two runs
  # of the same model in bf16 at another batch shape, not more.
  np.testing.assert_allclose(split['loss'], plain['loss'], rtol=0.02)
  for k in ('train_correct', 'test_correct'):
    assert (split[k] != plain[k]).mean() < 0.01, k
  assert split['test_correct'].mean() > 0.85


def test_split_storage_carries_half_words_and_no_cast():
  c = config_lib.base()
  c.model.hidden = (16,)
  c.train.update(compute_dtype='bfloat16', param_storage='split')
  c = resolve.resolve(c)
  model = models.create(c.model, 3, jnp.bfloat16)
  step, tx, storage = train.make_config_step(model, c, 32)
  x = np.zeros((4, 2, 2, 1), np.uint8)
  params, state = models.init(model, jax.random.key(0), x)
  carry = (storage.store(params), state, tx.init(params))
  assert {a.dtype for a in jax.tree.leaves(carry[0])} == {
      jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.int16)}
  jaxpr = jax.make_jaxpr(step)(carry, x, np.zeros(4, np.int32),
                               np.ones(4, np.float32), jax.random.key(1))
  # The model reads hi as is: no f32 -> bf16 convert of any weight before
  # the first matmul (the float32 storage has one per weight).
  def f32_to_bf16(jaxpr_):
    return [e for e in jaxpr_.eqns if e.primitive.name == 'convert_element_type'
            and e.invars[0].aval.dtype == jnp.float32
            and e.params['new_dtype'] == jnp.bfloat16
            and e.invars[0].aval.shape in {p.shape for p in
                                           jax.tree.leaves(params)}]
  assert not f32_to_bf16(jaxpr.jaxpr)
  c.train.param_storage = 'float32'
  step, tx, storage = train.make_config_step(model, c, 32)
  carry = (storage.store(params), state, tx.init(params))
  jaxpr = jax.make_jaxpr(step)(carry, x, np.zeros(4, np.int32),
                               np.ones(4, np.float32), jax.random.key(1))
  assert f32_to_bf16(jaxpr.jaxpr)


def test_split_storage_needs_bf16_compute():
  c = config_lib.base()
  c.train.param_storage = 'split'
  c.train.compute_dtype = 'float32'
  with pytest.raises(errors.ConfigError, match='param_storage=split'):
    resolve.resolve(c)
  c.train.compute_dtype = config_lib.AUTO  # float32 on the CPU
  with pytest.raises(errors.ConfigError, match='auto is float32'):
    resolve.resolve(c, 'cpu')
  assert resolve.resolve(c, 'gpu').train.compute_dtype == 'bfloat16'
  c.train.compute_dtype = 'bfloat16'
  resolve.resolve(c)
  with pytest.raises(ValueError, match='needs bf16'):
    precision.storage('split', jnp.float32)


def test_runs_recorded_before_param_storage_still_resume(tmp_path,
                                                         tiny_config):
  ds = data.load('digits')
  ident = identity_lib.identity(resolve.resolve(tiny_config), ds)
  old = dict(ident, config={k: v for k, v in ident['config'].items()
                            if k != 'train.param_storage'})
  workdir = str(tmp_path / 'run')
  identity_lib.check_identity(workdir, old)  # an older version's run.json
  z = np.zeros((1, 4), bool)  # and a stored model, so the check is real
  chunks.write_chunk(workdir, [0], z, z, z, z, z, np.zeros((1, 1)))
  identity_lib.check_identity(workdir, ident)  # resumes: the field's old meaning
  tiny_config.train.compute_dtype = 'bfloat16'
  tiny_config.train.param_storage = 'split'
  with pytest.raises(errors.StoreError, match='param_storage'):
    identity_lib.check_identity(workdir, identity_lib.identity(
        resolve.resolve(tiny_config), ds))


def test_auto_storage_is_split_exactly_where_the_compute_is_bf16(tiny_config):
  c = tiny_config
  c.train.param_storage = config_lib.AUTO
  for dtype, want in (('float32', 'float32'), ('bfloat16', 'split')):
    c.train.compute_dtype = dtype
    assert resolve.resolve(c).train.param_storage == want
  # compute_dtype auto is f32 on a CPU, bf16 elsewhere: so is the storage.
  c.train.compute_dtype = config_lib.AUTO
  assert resolve.resolve(c, 'cpu').train.param_storage == 'float32'
  assert resolve.resolve(c, 'tpu').train.param_storage == 'split'
  assert c.train.param_storage == config_lib.AUTO  # a copy, not changed
  assert train.config_storage(resolve.resolve(c)).view is not None
  with pytest.raises(KeyError):  # the trainer takes resolved configs only
    precision.compute_dtype(config_lib.AUTO)


def test_identity_holds_the_resolved_storage(tmp_path, tiny_config):
  # A run recorded with explicit float32 resumes under auto where auto means
  # float32 (f32 compute), and is refused where auto means split.
  ds = data.load('digits')
  workdir = str(tmp_path / 'run')
  tiny_config.train.update(compute_dtype='bfloat16', param_storage='float32')
  ident = lambda c, **kw: identity_lib.identity(resolve.resolve(c, **kw), ds)
  identity_lib.check_identity(workdir, ident(tiny_config))
  z = np.zeros((1, 4), bool)
  chunks.write_chunk(workdir, [0], z, z, z, z, z, np.zeros((1, 1)))
  tiny_config.train.param_storage = config_lib.AUTO
  with pytest.raises(identity_lib.IdentityError, match='param_storage'):
    identity_lib.check_identity(workdir, ident(tiny_config))
  tiny_config.train.param_storage = 'split'
  with pytest.raises(identity_lib.IdentityError, match='param_storage'):
    identity_lib.check_identity(workdir, ident(tiny_config))
  tiny_config.train.param_storage = 'float32'
  identity_lib.check_identity(workdir, ident(tiny_config))
  # The job itself: auto keeps the workdir's storage (auto once meant
  # float32 everywhere), an explicit other storage is still refused.
  tiny_config.train.param_storage = config_lib.AUTO
  recorded = identity_lib.recorded_config(workdir)
  kept = resolve.resolve(tiny_config, recorded=recorded)
  assert kept.train.param_storage == 'float32'
  assert tiny_config.train.param_storage == config_lib.AUTO  # not changed
  identity_lib.check_identity(workdir, ident(tiny_config, recorded=recorded))
  assert identity_lib.recorded_config(str(tmp_path / 'new')) is None
  assert resolve.resolve(tiny_config).train.param_storage == 'split'


def test_auto_resumes_a_float32_run_with_float32(tiny_config, tmp_path):
  tiny_config.train.update(compute_dtype='bfloat16', param_storage='float32',
                           epochs=1)
  tiny_config.num_models = 5
  workdir = str(tmp_path / 'run')
  pipeline.run(tiny_config, workdir)
  tiny_config.train.param_storage = config_lib.AUTO
  tiny_config.num_models = 7
  summary = pipeline.run(tiny_config, workdir)
  assert summary['timing']['models_trained'] == 2
  # config.json records the config as given; run.json what it resolved to.
  assert store.read_json(os.path.join(workdir, 'config.json'))['train'][
      'param_storage'] == config_lib.AUTO
  assert identity_lib.read_identity(workdir)['config'][
      'train.param_storage'] == 'float32'
  tiny_config.train.param_storage = 'split'
  with pytest.raises(identity_lib.IdentityError, match='param_storage'):
    pipeline.run(tiny_config, workdir)


def test_auto_dtypes_and_what_they_resolve_to_are_one_run(tmp_path,
                                                          tiny_config):
  ds = data.load('digits')
  workdir = str(tmp_path / 'run')
  # compute_dtype auto: f32 here
  ident = identity_lib.identity(resolve.resolve(tiny_config), ds)
  assert ident['config']['train.compute_dtype'] == 'float32'
  # As runs before resolved dtypes wrote it: the config as written.
  old = dict(ident, config=dict(ident['config'],
                                **{'train.compute_dtype': config_lib.AUTO,
                                   'train.momentum_dtype': config_lib.AUTO}))
  identity_lib.check_identity(workdir, old)
  z = np.zeros((1, 4), bool)
  chunks.write_chunk(workdir, [0], z, z, z, z, z, np.zeros((1, 1)))
  tiny_config.train.update(compute_dtype='float32', momentum_dtype='float32')
  identity_lib.check_identity(workdir, identity_lib.identity(
      resolve.resolve(tiny_config), ds))
  tiny_config.train.compute_dtype = 'bfloat16'
  with pytest.raises(identity_lib.IdentityError, match=(
      r"config.train.compute_dtype \(stored 'float32', given 'bfloat16'\)")):
    identity_lib.check_identity(workdir, identity_lib.identity(
        resolve.resolve(tiny_config), ds))
