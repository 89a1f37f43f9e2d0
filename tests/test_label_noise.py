import numpy as np
import pytest

from feldman_zhang import data
from feldman_zhang import estimates_file
from feldman_zhang import pipeline

pytestmark = pytest.mark.integration  # runs and subprocesses


def test_with_label_noise_changes_exactly_the_recorded_labels():
  ds = data.load('digits')
  noisy = data.with_label_noise(ds, 0.2, seed=3)
  assert noisy.corrupted.sum() == 260
  np.testing.assert_array_equal(noisy.y_train != ds.y_train, noisy.corrupted)
  assert noisy.y_train.min() >= 0 and noisy.y_train.max() < 10
  again = data.with_label_noise(ds, 0.2, seed=3)
  np.testing.assert_array_equal(again.y_train, noisy.y_train)
  other = data.with_label_noise(ds, 0.2, seed=4)
  assert not np.array_equal(other.corrupted, noisy.corrupted)


def test_corrupted_labels_are_memorized(tiny_config, tmp_path):
  c = tiny_config
  c.data.label_noise = 0.2
  c.num_models = 32
  c.models_per_device = 16
  c.model.hidden = (256,)
  # Long enough, in small enough steps, to fit the wrong labels.
  c.train.update(epochs=60, batch_size=32, lr=0.05)
  summary = pipeline.run(c, str(tmp_path / 'run'))
  est = estimates_file.load_estimates(str(tmp_path / 'run'))
  bad = est['label_corrupted']
  assert bad.sum() == 260
  mem = est['mem']
  # A corrupted label can only be right if the model saw it: mem near 1.
  # A clean one is mostly right either way: mem near 0.
  assert np.median(mem[bad]) > 0.6
  assert np.median(mem[~bad]) < 0.1
  ln = summary['label_noise']
  assert ln['mem_median_corrupted'] == np.median(mem[bad])
  assert (ln['memorized_corrupted'] / bad.sum() >
          3 * ln['memorized_clean'] / (~bad).sum())
