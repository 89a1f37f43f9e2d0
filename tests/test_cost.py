"""cost.py: the plan of work and disk, XLA's FLOP count, the disk check:
what a job will do and take is said, and a disk that cannot hold it refused,
before the workdir is touched (issue 17, items 10 and 12)."""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import logging

from conftest import ROOT
from feldman_zhang import chunks as chunks_lib
from feldman_zhang import config as config_lib
from feldman_zhang import cost
from feldman_zhang import errors
from feldman_zhang import estimates_file
from feldman_zhang import pipeline
from feldman_zhang import prepare
from feldman_zhang import resolve
from feldman_zhang import units


def test_auto_writes_the_dense_matrix_up_to_a_gib_and_the_top_k_above():
  c = config_lib.base()
  assert c.estimate.infl == config_lib.AUTO
  # Without the sizes it stays auto; the job resolves it once the data is in.
  assert resolve.resolve(c).estimate.infl == config_lib.AUTO
  small = resolve.resolve(c, sizes=(1300, 497)).estimate
  assert small.infl is True and small.infl_topk == 0
  # MNIST: 60,000 x 10,000 float32 is 2.4 GB.
  big = resolve.resolve(c, sizes=(60000, 10000)).estimate
  assert big.infl is False and big.infl_topk == resolve.AUTO_TOPK
  edge = resolve.DENSE_INFL_BYTES // 4
  assert resolve.resolve(c, sizes=(edge, 1)).estimate.infl is True
  assert resolve.resolve(c, sizes=(edge + 1, 1)).estimate.infl is False
  # What the user sets is kept: dense at any size, or their own k.
  c.estimate.infl = True
  assert resolve.resolve(c, sizes=(60000, 10000)).estimate.infl is True
  c.estimate.infl, c.estimate.infl_topk = config_lib.AUTO, 25
  assert resolve.resolve(c, sizes=(60000, 10000)).estimate.infl_topk == 25
  c.estimate.infl = False
  assert resolve.resolve(c, sizes=(10, 10)).estimate.infl is False
  c.estimate.infl = 'yes'
  with pytest.raises(errors.ConfigError,
                     match='estimate.infl must be auto, True or False'):
    resolve.resolve(c)


@pytest.mark.parametrize('field,value,want', [
    # estimate.infl holds 'auto' or a bool: False must not become the
    # (truthy) string 'False'; train.epochs an int or a float.
    ('estimate.infl', 'False', 'False'), ('estimate.infl', 'True', 'True'),
    ('estimate.infl', 'auto', "'auto'"), ('train.epochs', '9.9', '9.9'),
    ('train.epochs', '3', '3')])
def test_the_command_line_parses_the_object_fields(tmp_path, field, value,
                                                   want):
  code = ('from absl import app; from feldman_zhang import cli, main; '
          f'app.run(lambda _: print(repr(main.FLAGS.config.{field})), '
          'flags_parser=cli.parse_flags)')
  out = subprocess.run(
      [sys.executable, '-c', code, '--config=configs/digits_mlp.py',
       f'--config.{field}={value}', f'--workdir={tmp_path}'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip().splitlines()[-1] == want


def test_a_run_above_the_limit_writes_the_top_k_form_not_the_matrix(
    tiny_config, tmp_path, monkeypatch):
  monkeypatch.setattr(resolve, 'DENSE_INFL_BYTES', 1000)
  tiny_config.estimate.infl = config_lib.AUTO
  workdir = str(tmp_path / 'run')
  pipeline.run(tiny_config, workdir)
  est = estimates_file.load_estimates(workdir)
  assert 'infl' not in est
  assert est['infl_top_infl'].shape == (resolve.AUTO_TOPK, 497)
  assert not glob.glob(os.path.join(workdir, 'infl-*.npy'))
  # The same run asked for the matrix writes it, and its top-k is its top.
  tiny_config.estimate.infl = True
  pipeline.run(tiny_config, workdir)
  dense = estimates_file.load_estimates(workdir)['infl']
  top = np.sort(np.asarray(dense), axis=0)[::-1][:resolve.AUTO_TOPK]
  np.testing.assert_allclose(np.sort(est['infl_top_infl'], axis=0)[::-1],
                             top, atol=1e-6)


def test_the_plan_counts_what_is_left_and_the_disk_it_takes(
    tiny_config, tmp_path):
  job = prepare.prepare(tiny_config)
  c, ds, m, model = job.config, job.ds, job.m, job.model
  p = cost.plan(c, ds, m, model, todo=c.num_models)
  assert p.steps == -(-m // c.train.batch_size) * c.train.epochs
  # infl and, with estimate.margin, infl_margin.
  dense = 4 * ds.num_train * ds.num_test * 2
  chunks = cost.chunk_bytes(c.num_models, ds.num_train, ds.num_test,
                            c.train.epochs, 1)
  assert dense + chunks < p.disk_bytes < dense + chunks + 64 * 1024
  half = cost.plan(c, ds, m, model, todo=c.num_models // 2)
  assert half.disk_bytes < p.disk_bytes
  # No FLOPs or floor where no peak is known (the CPU): nothing lowered.
  assert np.isnan(p.flops) and p.floor_s is None
  line = cost.describe(p, c)
  assert line.startswith(f'plan: {c.num_models:,} models to train')
  assert units.human_bytes(p.disk_bytes) in line


def test_a_known_peak_gives_flops_and_a_time_floor(tiny_config, monkeypatch):
  monkeypatch.setattr(cost, '_peak_flops', lambda: 1e12)
  job = prepare.prepare(tiny_config)
  c, ds, m, model = job.config, job.ds, job.m, job.model
  p = cost.plan(c, ds, m, model, todo=c.num_models)
  counted = cost.count(model, c, ds, m)
  want = c.num_models * (counted['train_flops_per_model'] +
                         counted['eval_flops_per_model'])
  assert p.flops == pytest.approx(want) and p.flops > 0
  assert p.floor_s == pytest.approx(want / 1e12)
  assert 'at the devices\' peak' in cost.describe(p, c)


def test_a_disk_too_small_is_refused_before_the_workdir_exists(
    tiny_config, tmp_path, monkeypatch):
  class Usage:
    total, free = 10**12, 10_000
  monkeypatch.setattr(cost.shutil, 'disk_usage', lambda path: Usage)
  workdir = str(tmp_path / 'new' / 'run')
  with pytest.raises(errors.StoreError) as e:
    pipeline.run(tiny_config, workdir)
  message = str(e.value)
  assert '\n' not in message
  assert 'needs about' in message and '10.0 kB free' in message
  assert not os.path.exists(os.path.dirname(workdir))


def test_the_job_logs_its_plan_before_training(tiny_config, tmp_path,
                                               monkeypatch):
  lines = []
  monkeypatch.setattr(logging, 'info',
                      lambda msg, *a: lines.append(msg % a if a else msg))
  pipeline.run(tiny_config, str(tmp_path / 'run'))
  plan = [i for i, l in enumerate(lines) if l.startswith('plan: ')]
  training = [i for i, l in enumerate(lines) if l.startswith('training ')]
  assert plan and training and plan[0] < training[0]
  assert lines[plan[0]].startswith(f'plan: {tiny_config.num_models} models')


@pytest.mark.parametrize('shape', [(5, 1300, 497, 4, 1),      # digits
                                   (4, 60000, 10000, 10, 1),  # MNIST
                                   (2, 50000, 10000, 10, 6)])  # CIFAR, TTA
def test_the_plan_counts_a_chunk_within_ten_percent(tmp_path, shape):
  k, n, n_test, epochs, views = shape
  rng = np.random.default_rng(0)
  bits = lambda *s: rng.random(s) < 0.5
  floats = lambda *s: rng.standard_normal(s).astype(np.float32)
  path = chunks_lib.write_chunk(
      str(tmp_path), np.arange(k), bits(k, n), bits(k, n), bits(k, n_test),
      floats(k, n), floats(k, n_test), floats(k, epochs),
      floats(k, n, views), floats(k, n_test, views), run_id='0' * 16)
  planned = cost.chunk_bytes(k, n, n_test, epochs, views) + cost.CHUNK_OVERHEAD
  assert abs(planned - os.path.getsize(path)) < 0.1 * os.path.getsize(path)
