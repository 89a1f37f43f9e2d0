"""The two experiments on the planted long-tail data set."""

import collections
import os
import shutil

import jax
import numpy as np
import pytest

import planted
from feldman_zhang import chunks
from feldman_zhang import config as config_lib
from feldman_zhang.experiments import drop as drop_lib
from feldman_zhang.experiments import lastlayer as lastlayer_lib
from feldman_zhang import errors
from feldman_zhang import estimates_file
from feldman_zhang import pipeline
from feldman_zhang import prepare
from feldman_zhang import store

pytestmark = pytest.mark.integration  # runs and subprocesses


@pytest.fixture(scope='module')
def planted_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('planted')
  train_ids, test_ids = planted.make(tmp / 'planted.npz')
  c = planted.config(tmp / 'planted.npz')
  c.num_models = 64
  c.drop.update(thresholds=(0.6,), num_models=6)
  c.lastlayer.update(epochs=25, models_per_device=64)
  workdir = str(tmp / 'run')
  pipeline.run(c, workdir)
  return c, workdir, train_ids, test_ids


def test_dropping_memorized_costs_more_than_random(planted_run):
  c, workdir, train_ids, test_ids = planted_run
  mem = estimates_file.load_estimates(workdir)['mem']
  rows = drop_lib.drop(c, workdir)
  assert len(rows) == 1 and rows[0]['num_removed'] == (mem >= 0.6).sum()
  result = np.load(os.path.join(workdir, 'drop', 'theta_0.6000.npz'))
  # The highest-mem examples include the plants: without them their twins
  # in the test set are lost; a random removal of as many rarely hits one.
  assert np.isin(train_ids, result['removed']).mean() >= 0.8
  twins_high = result['test_correct'][:6, test_ids].mean()
  twins_random = result['test_correct'][6:, test_ids].mean()
  assert twins_random - twins_high > 0.3, (twins_high, twins_random)
  assert rows[0]['acc_high_mem_removed'] < rows[0]['acc_random_removed']
  csv = open(os.path.join(workdir, 'drop', 'drop.csv')).read().splitlines()
  assert csv[0].startswith('theta,num_removed,fraction_removed') and len(csv) == 2
  # Numbers only; the figure is the analysis scripts'.
  assert not os.path.exists(os.path.join(workdir, 'drop', 'drop.png'))
  from feldman_zhang.analysis import experiment_figures, plots, runs  # pylint: disable=g-import-not-at-top
  made = experiment_figures.figures(runs.load_run(workdir))
  assert len(plots.png_bytes(made[os.path.join('drop', 'drop.png')])) > 1000
  # A rerun reads the finished threshold back instead of retraining.
  mtime = os.path.getmtime(os.path.join(workdir, 'drop', 'theta_0.6000.npz'))
  assert drop_lib.drop(c, workdir) == rows
  assert os.path.getmtime(
      os.path.join(workdir, 'drop', 'theta_0.6000.npz')) == mtime


def test_random_arm_sets_are_distinct_and_exact():
  n, r = 500, 40
  sets = {drop_lib.random_removal(0, 0, j, n, r).tobytes() for j in range(20)}
  sets |= {drop_lib.random_removal(s, 0, 0, n, r).tobytes()
           for s in range(1, 20)}
  assert len(sets) == 39
  gone = drop_lib.random_removal(3, 2, 1, n, r)
  assert len(np.unique(gone)) == r and gone.min() >= 0 and gone.max() < n
  np.testing.assert_array_equal(gone, drop_lib.random_removal(3, 2, 1, n, r))


@pytest.mark.optimized
def test_drop_compiles_each_size_once_ahead_with_the_same_results(
    planted_run):
  c, _, _, _ = planted_run
  job = prepare.prepare(c)
  config, ds, model = job.config, job.ds, job.model
  n = ds.num_train
  ahead = drop_lib.compile_ahead(config, model, ds, [n - 3, n - 5, n - 3])
  assert sorted(ahead) == [n - 5, n - 3]        # one program per size
  assert ahead[n - 3][0].data is ahead[n - 5][0].data   # one device copy
  removed = np.arange(3)
  early = drop_lib.drop_one(config, ds, model, removed, 0.5, 0, ahead[n - 3])
  alone = drop_lib.drop_one(config, ds, model, removed, 0.5, 0)
  assert early.keys() == alone.keys()
  for k in early:
    np.testing.assert_array_equal(early[k], alone[k], err_msg=k)


def test_drop_keeps_exactly_the_complement(planted_run, monkeypatch):
  c, workdir, _, _ = planted_run
  seen = {}

  def fake_train(config, model, ds, idx, keys, ahead=None):
    seen['idx'] = idx
    k = len(idx)
    return dict(test_correct=np.ones((k, ds.num_test), bool),
                loss=np.zeros((k, 1)))

  monkeypatch.setattr(drop_lib, 'train_rows', fake_train)
  ds = prepare.prepare(c).ds
  mem = estimates_file.load_estimates(workdir)['mem']
  result = drop_lib.drop_one(c, ds, None, np.flatnonzero(mem >= 0.5), 0.5,
                                3)
  n = ds.num_train
  for row, gone in zip(seen['idx'], [result['removed']] * 6 +
                       list(result['random_removed'])):
    assert len(row) + len(gone) == n
    np.testing.assert_array_equal(np.union1d(row, gone), np.arange(n))


def test_drop_retrains_on_other_settings_and_leaves_diverged_out(
    planted_run, monkeypatch):
  c, workdir, _, _ = planted_run
  c = config_lib.copy(c)
  c.drop.thresholds = (0.55,)
  calls = []

  def fake_train(config, model, ds, idx, keys, ahead=None):
    k = len(idx)
    calls.append(k)
    correct = np.zeros((k, ds.num_test), bool)
    correct[:, :ds.num_test // 2] = True      # every model: accuracy ~1/2
    loss = np.zeros((k, 1))
    correct[0], loss[0] = True, np.nan         # but the first one diverged
    return dict(test_correct=correct, loss=loss)

  monkeypatch.setattr(drop_lib, 'train_rows', fake_train)
  monkeypatch.setattr(drop_lib, 'compile_ahead',
                      lambda *a: collections.defaultdict(lambda: None))
  rows = drop_lib.drop(c, workdir)
  n_test = np.load(os.path.join(workdir, 'drop', 'theta_0.5500.npz'))[
      'test_correct'].shape[1]
  half = (n_test // 2) / n_test
  assert rows[0]['acc_high_mem_removed'] == pytest.approx(half)
  assert rows[0]['acc_random_removed'] == pytest.approx(half)
  assert calls == [12]
  drop_lib.drop(c, workdir)        # same settings: read back
  assert calls == [12]
  c.drop.num_models = 4               # other settings: trained again
  drop_lib.drop(c, workdir)
  c.drop.seed = 1
  drop_lib.drop(c, workdir)
  assert calls == [12, 8, 8]
  os.remove(os.path.join(workdir, 'drop', 'theta_0.5500.npz'))


def test_last_layer_does_not_memorize_the_plants(planted_run):
  c, workdir, train_ids, _ = planted_run
  comparison = lastlayer_lib.lastlayer(c, workdir, pipeline.run_on)
  full = estimates_file.load_estimates(workdir)['mem']
  last = estimates_file.load_estimates(
      os.path.join(workdir, 'lastlayer'))['mem']
  assert np.median(full[train_ids]) > 0.8
  assert np.median(last[train_ids]) < 0.2
  assert comparison['memorized_last'] < comparison['memorized_full'] / 2
  # Heads trained on the full models' own subsets.
  a = chunks.load_predictions(workdir)['masks']
  b = chunks.load_predictions(os.path.join(workdir, 'lastlayer'))['masks']
  np.testing.assert_array_equal(a, b)
  assert os.path.exists(os.path.join(workdir, 'lastlayer', 'backbone'))
  # Resumes: the backbone is restored, the heads are not retrained.
  again = lastlayer_lib.lastlayer(c, workdir, pipeline.run_on)
  assert again == comparison
  assert comparison['num_models_full'] == comparison['num_models_last'] == (
      c.num_models)


def test_last_layer_says_when_its_model_count_differs(planted_run, caplog,
                                                      tmp_path):
  c, workdir, _, _ = planted_run
  c = config_lib.copy(c)  # the module's run stays as it is
  workdir = str(shutil.copytree(workdir, tmp_path / 'run'))
  c.num_models += 2  # two more heads than the estimate has models
  comparison = lastlayer_lib.lastlayer(c, workdir, pipeline.run_on)
  assert comparison['num_models_last'] == comparison['num_models_full'] + 2
  assert f'lastlayer trains {c.num_models} heads' in caplog.text


def test_heads_train_in_f32_whatever_the_networks_precision(tiny_config):
  from feldman_zhang import train
  tiny_config.train.update(compute_dtype='bfloat16', param_storage='split')
  head = lastlayer_lib.make_head_config(tiny_config)
  assert (head.train.compute_dtype, head.train.param_storage) == (
      'float32', 'float32')
  train.config_storage(head)  # split storage would refuse f32 compute
  assert head.seed == tiny_config.seed
  assert head.subset_ratio == tiny_config.subset_ratio


def test_a_damaged_backbone_checkpoint_is_trained_again(tiny_config,
                                                        tmp_path):
  c = tiny_config
  c.train.epochs = 2
  job = prepare.prepare(c)
  workdir = str(tmp_path)
  _, params, _ = lastlayer_lib.backbone(job, workdir)
  path = os.path.join(workdir, 'lastlayer', 'backbone')
  for root, _, files in os.walk(path):  # truncate every file of it
    for name in files:
      open(os.path.join(root, name), 'wb').close()
  _, again, _ = lastlayer_lib.backbone(job, workdir)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)


def test_head_config_has_no_network_warmup_and_is_valid(tiny_config):
  tiny_config.train.update(epochs=9.9, warmup_epochs=5.0, schedule='linear',
                           drop_last=True)
  tiny_config.lastlayer.epochs = 4  # shorter than the network's warm-up
  head = lastlayer_lib.make_head_config(tiny_config)
  assert head.train.warmup_epochs == 0 and head.train.schedule == 'linear'
  assert head.train.momentum_dtype == 'float32'
  # Heads see every example every epoch, airbench's dropped batch or not.
  assert head.train.epochs == 4 and not head.train.drop_last


def test_experiments_refuse_several_processes(planted_run, monkeypatch):
  c, workdir, _, _ = planted_run
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  with pytest.raises(errors.ConfigError, match='one process'):
    drop_lib.drop(c, workdir)


def test_no_step_of_training_is_refused_for_heads_and_drop_arms(tiny_config):
  from feldman_zhang import optimizer
  head = lastlayer_lib.make_head_config(tiny_config)
  with head.unlocked():
    head.train.epochs = 1e-9
  with pytest.raises(errors.ConfigError,
                     match='lastlayer.epochs=1e-09 trains no step'):
    prepare.check_steps(head.train, 910, 'lastlayer')
  # An arm left with fewer examples than one batch, which drop_last drops.
  tiny_config.train.drop_last = True
  ds = prepare.prepare(tiny_config).ds
  removed = np.arange(ds.num_train - tiny_config.train.batch_size + 1)
  assert optimizer.step_counts(ds.num_train - len(removed),
                               tiny_config.train)[1] == 0
  with pytest.raises(errors.ConfigError, match='trains no step'):
    drop_lib.drop_one(tiny_config, ds, None, removed, 0.1, 0)


def _backbone_files(path):
  return [os.path.join(root, name) for root, _, names in os.walk(path)
          for name in names]


def test_flipped_bytes_in_the_backbone_checkpoint_are_caught(tiny_config,
                                                            tmp_path, caplog):
  tiny_config.train.epochs = 2
  job = prepare.prepare(tiny_config)
  workdir = str(tmp_path)
  _, params, _ = lastlayer_lib.backbone(job, workdir)
  path = store.Workdir(workdir).backbone
  # The weights' own bytes (the largest file): orbax reads them back
  # without complaint, as other weights.
  weights = max(_backbone_files(path), key=os.path.getsize)
  data = bytearray(open(weights, 'rb').read())
  for i in range(4):
    data[len(data) // 2 + i] ^= 0x01
  open(weights, 'wb').write(bytes(data))
  _, again, _ = lastlayer_lib.backbone(job, workdir)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
  assert f'the backbone checkpoint {path} fails its checksum' in caplog.text
  # Trained again and saved with its checksum: the next run restores it.
  caplog.clear()
  caplog.set_level('INFO')
  lastlayer_lib.backbone(job, workdir)
  assert 'restored the backbone' in caplog.text
  assert 'training it again' not in caplog.text


def test_a_full_disk_while_saving_the_backbone_is_one_line(tiny_config,
                                                          tmp_path,
                                                          monkeypatch):
  import errno
  import orbax.checkpoint as ocp
  tiny_config.train.epochs = 2
  job = prepare.prepare(tiny_config)
  workdir = str(tmp_path)
  path = store.Workdir(workdir).backbone
  real_save = ocp.StandardCheckpointer.save

  def full(self, directory, *args, **kwargs):
    # Where orbax writes before it renames, then tensorstore's failure.
    os.makedirs(f'{directory}.orbax-checkpoint-tmp-1234/d')
    open(f'{directory}.orbax-checkpoint-tmp-1234/d/x', 'wb').write(b'x')
    raise ValueError(
        'RESOURCE_EXHAUSTED: Error writing local file "'
        f'{directory}.orbax-checkpoint-tmp-1234/d/x": No space left on '
        f'device [os_error_code={errno.ENOSPC}] [source locations=...]\n'
        + 'tensorstore detail\n' * 300)

  monkeypatch.setattr(ocp.StandardCheckpointer, 'save', full)
  with pytest.raises(errors.StoreError) as raised:
    lastlayer_lib.backbone(job, workdir)
  message = str(raised.value)
  assert '\n' not in message and len(message) < 400, message
  assert f'cannot save the backbone checkpoint {path}' in message
  assert 'No space left on device' in message
  assert os.listdir(os.path.join(workdir, 'lastlayer')) == []
  monkeypatch.setattr(ocp.StandardCheckpointer, 'save', real_save)
  lastlayer_lib.backbone(job, workdir)  # with room again, it saves
  assert os.path.exists(path)
