"""The benchmark harness: its counts, and that its arms train the same models."""

import types

import jax
import numpy as np
import pytest

from feldman_zhang import config as config_lib
from feldman_zhang.bench import harness as bench
from feldman_zhang import data
from feldman_zhang import models
from feldman_zhang import resolve
from feldman_zhang import subsets
from feldman_zhang import train


def test_counts_of_the_reference_mlp(tiny_config):
  c = tiny_config
  c.model.hidden = (512, 256)
  ds = data.load('digits')
  m = subsets.subset_size(ds.num_train, c.subset_ratio)
  counts = bench.count(models.create(c.model, 10), c, ds, m)
  matmul = 2 * (64 * 512 + 512 * 256 + 256 * 10)
  # XLA also counts bias adds, ReLUs and the like: a few percent more.
  assert matmul <= counts['forward_flops_per_example'] <= 1.05 * matmul
  assert counts['num_params'] == 64 * 512 + 512 + 512 * 256 + 256 + 2570
  steps = -(-m // 64) * c.train.epochs
  assert counts['steps_per_model'] == steps
  # f32 on the CPU: forward and backward reads, gradient, momentum and
  # parameter writes and reads, 4 bytes each.
  assert counts['param_bytes_per_model'] == 32 * counts['num_params'] * steps
  assert counts['train_flops_per_model'] == (
      counts['train_flops_per_step'] * steps)
  # Backward is twice the forward's work but for the first layer's input
  # gradient, which nothing needs: (3 - 64*512 / (matmul/2)) forward passes,
  # plus the optimizer's few FLOPs per parameter.
  passes = 3 - 64 * 512 / (matmul / 2)
  per_step = counts['forward_flops_per_example'] * 64
  assert passes * per_step <= counts['train_flops_per_step'] <= (
      passes * per_step + 10 * counts['num_params'])


def _bytes(config):
  return bench.bytes_per_param_step(resolve.resolve(config))


def test_byte_model_follows_the_dtypes(tiny_config):
  t = tiny_config.train
  t.compute_dtype, t.momentum_dtype = 'float32', 'float32'
  assert _bytes(tiny_config)['total'] == 32
  t.compute_dtype, t.param_storage = 'bfloat16', 'float32'
  # + cast pass (6), bf16 reads and gradient
  assert _bytes(tiny_config) == dict(
      cast=6, forward=2, backward=2, gradient=4, momentum=8, params=8,
      total=30)
  t.momentum_dtype = 'bfloat16'
  assert _bytes(tiny_config)['total'] == 26
  t.param_storage = 'split'  # no cast pass
  assert _bytes(tiny_config)['total'] == 20
  t.param_storage = config_lib.AUTO  # split, with bf16 compute
  assert _bytes(tiny_config)['total'] == 20
  t.momentum = 0.0
  assert _bytes(tiny_config)['total'] == 16


@pytest.mark.optimized
@pytest.mark.parametrize('epochs,drop_last', [(2, False), (1.5, True)])
def test_steploop_trains_the_same_model(tiny_config, epochs, drop_last):
  c = tiny_config
  c.train.update(epochs=epochs, drop_last=drop_last)
  ds = data.load('digits')
  m = subsets.subset_size(ds.num_train, c.subset_ratio)
  model = models.create(c.model, 10)
  key = train.model_keys(c.seed, [5])[0]
  idx = subsets.indices(c.seed, ds.num_train, m, [5])[0]
  (p_scan, _), _ = jax.jit(train.make_trainer(model, c, m))(
      key, idx, ds.x_train, ds.y_train)
  (p_loop, _), losses = bench.train_steploop(model, c, m, key, idx,
                                             ds.x_train, ds.y_train)
  per_epoch = m // 64 if drop_last else -(-m // 64)
  assert len(losses) == -(-epochs * per_epoch // 1)
  for a, b in zip(jax.tree.leaves(p_scan), jax.tree.leaves(p_loop)):
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_run_reports_consistent_figures(tiny_config):
  c = tiny_config
  c.train.epochs = 1
  # More sample steps than a model takes: timed on the whole model.
  result = bench.run(c, num_models=6, sample_models=1, sample_steps=10_000)
  assert set(result['arms']) == {'vmap', 'single', 'steploop'}
  for arm in result['arms'].values():
    assert arm['seconds'] > 0 and arm['compile_s'] > 0
    np.testing.assert_allclose(arm['models_per_s'], 6 / arm['seconds'])
    np.testing.assert_allclose(
        arm['tflops_fraction'], arm['tflops'] / result['peaks']['matmul_tflops']
        / arm['devices'])
  assert result['arms']['steploop']['models_timed'] == 1
  assert result['arms']['vmap']['devices'] == jax.local_device_count()
  assert result['arms']['vmap']['models_timed'] == 10  # 2 calls of K=5
  assert result['speedup']['vmap_over_single'] == (
      result['arms']['single']['seconds'] / result['arms']['vmap']['seconds'])
  assert 'vmap' in bench.table(result)


@pytest.mark.optimized
def test_step_layouts_train_the_same_models(tiny_config):
  from tools import step_layouts as bench_step  # pylint: disable=g-import-not-at-top
  c = tiny_config
  ds = data.load('digits')
  m = subsets.subset_size(ds.num_train, c.subset_ratio)
  model = models.create(c.model, 10)
  rows = {v: bench_step.time_variant(v, model, c, ds, m, k=3, steps=20, reps=1)
          for v in bench_step.VARIANTS}
  assert all(r['finite'] and r['step_s'] > 0 for r in rows.values())
  # gather and map run the same steps on the same batches; shared draws
  # other batches, but the models still learn.
  assert abs(rows['gather']['final_loss'] - rows['map']['final_loss']) < 1e-4
  assert rows['shared']['final_loss'] != rows['gather']['final_loss']
  assert rows['shared']['final_loss'] < np.log(10)
  with pytest.raises(ValueError, match='unknown step variant'):
    bench_step.time_variant('scan', model, c, ds, m, k=3)


def test_steploop_arm_scales_a_sample_of_steps(tiny_config, monkeypatch):
  c = tiny_config
  c.train.epochs = 1
  ds = data.load('digits')
  m = subsets.subset_size(ds.num_train, c.subset_ratio)
  steps = -(-m // 64)
  # A clock that ticks 1 s per reading: a model's loop reads it at its start,
  # around its setup and at its end, so the timed model's setup takes 1 s
  # and its 3 steps 2 s; the first model (the compile) is not counted.
  ticks = iter(range(10**6))
  monkeypatch.setattr(bench, 'time', types.SimpleNamespace(
      perf_counter=lambda: float(next(ticks))))
  arm = bench.time_steploop(c, models.create(c.model, 10), ds, m, 4, 3)
  assert arm['models_timed'] == 3 / steps
  assert arm['seconds'] == pytest.approx(4 * (1 + 2 / 3 * steps))
  assert not arm['evaluates']
