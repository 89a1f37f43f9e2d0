"""Every config in configs/ loads, validates and builds its model; each
trains a step under vmap on mocked or random data of its real shape."""

import glob
import os

import jax
import numpy as np
import pytest

from conftest import ROOT
from feldman_zhang import config as config_lib
from feldman_zhang import errors
from feldman_zhang import models
from feldman_zhang import resolve
from feldman_zhang import train

CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))
SHAPES = {'digits': ((8, 8, 1), 10), 'tfds:mnist': ((28, 28, 1), 10),
          'tfds:cifar10': ((32, 32, 3), 10), 'tfds:cifar100': ((32, 32, 3), 100),
          'tfds:imagenet_resized/32x32': ((32, 32, 3), 1000)}


def test_all_configs_are_covered():
  names = {os.path.basename(p) for p in CONFIGS}
  assert {'digits_mlp.py', 'mnist_mlp.py', 'mnist_cnn.py', 'cifar10_resnet.py',
          'cifar100_resnet.py', 'imagenet32_resnet.py', 'cifar10_airbench.py',
          'cifar100_airbench.py'} <= names


@pytest.mark.optimized  # full-size models: minutes each at -O0
@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_config_builds_and_trains_one_step(path):
  c = resolve.resolve(config_lib.from_file(path))
  assert c.subset_ratio == 0.7 and c.num_models >= 1000
  shape, classes = SHAPES[c.data.source]
  # Real shapes, tiny model count and sizes: a step of each config's model.
  c.train.update(epochs=1, batch_size=4)
  c.eval_batch_size = 8
  model = models.create(c.model, classes)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (8, *shape), np.uint8)
  y = rng.integers(0, classes, 8).astype(np.int32)
  fn = train.make_chunk_fn(model, c, 4)
  out = fn(train.model_keys(0, [0, 1]), np.array([[0, 1, 2, 3], [4, 5, 6, 7]],
                                                   np.int32), x, y, x, y)
  assert out['train_correct'].shape == (2, 8)
  assert np.all(np.isfinite(jax.device_get(out['loss'])))


@pytest.mark.parametrize('name,widths', [
    ('cifar10_resnet', (4, 8, 8, 16)), ('cifar100_airbench', (4, 8, 8))])
def test_cifar_config_end_to_end_on_mocked_tfds(tmp_path, name, widths):
  tfds = pytest.importorskip('tensorflow_datasets')
  from feldman_zhang import chunks
  from feldman_zhang import estimates_file
  from feldman_zhang import pipeline
  c = config_lib.from_file(os.path.join(ROOT, 'configs', f'{name}.py'))
  c.num_models = 4
  c.models_per_device = 2
  c.cpu_models_per_device = 0  # two models a call on the CPU too
  c.model.widths = widths
  c.train.update(epochs=2, batch_size=8, warmup_epochs=1.0)
  if c.model.name == 'airbench':
    c.train.whiten_bias_epochs = 1
  c.eval_batch_size = 16
  with tfds.testing.mock_data(num_examples=24):
    summary = pipeline.run(c, str(tmp_path / 'run'))
  est = estimates_file.load_estimates(str(tmp_path / 'run'))
  assert est['mem'].shape == (24,) and est['infl'].shape == (24, 24)
  assert summary['num_models'] == 4 and summary['data'] == c.data.source
  preds = chunks.load_predictions(str(tmp_path / 'run'))
  assert preds['masks'].sum(1).tolist() == [17] * 4  # round(0.7 * 24)


def test_cpu_models_per_device_is_k_on_the_cpu_only():
  c = config_lib.from_file(os.path.join(ROOT, 'configs', 'mnist_mlp.py'))
  assert c.models_per_device == 1000 and c.cpu_models_per_device == 8
  assert resolve.resolve(c, 'cpu').models_per_device == 8
  assert resolve.resolve(c, 'gpu').models_per_device == 1000
  assert resolve.resolve(c, 'tpu').models_per_device == 1000
  c.cpu_models_per_device = 0  # 0: models_per_device everywhere
  assert resolve.resolve(c, 'cpu').models_per_device == 1000
  c.cpu_models_per_device = -1
  with pytest.raises(errors.ConfigError, match='cpu_models_per_device'):
    resolve.resolve(c, 'cpu')
  # The digits default sets none: its K, and so its bits, stay.
  d = config_lib.from_file(os.path.join(ROOT, 'configs', 'digits_mlp.py'))
  assert resolve.resolve(d, 'cpu').models_per_device == 100
  # The convolutional configs train one model a call on the CPU.
  for name in ('mnist_cnn', 'cifar10_airbench', 'cifar100_airbench',
               'cifar10_resnet', 'cifar100_resnet', 'imagenet32_resnet'):
    conv = config_lib.from_file(os.path.join(ROOT, 'configs', f'{name}.py'))
    assert resolve.resolve(conv, 'cpu').models_per_device == 1, name
    assert resolve.resolve(conv, 'gpu').models_per_device > 1, name
  # Not part of a run's identity: a GPU run resumes on the CPU.
  assert 'cpu_models_per_device' in config_lib.SCHEDULING_FIELDS
