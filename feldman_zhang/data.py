"""The data set a run trains on: a source loaded and checked, label noise
added.

`load(source)` reads the data set a source string names (see sources for
the formats) and checks it: uint8 images (N, H, W, C) and int32 labels (N,)
in [0, num_classes), with a fixed train/test split. `from_config` adds the
config's label noise (`with_label_noise`).
"""

import dataclasses

import numpy as np

from feldman_zhang import sources
from feldman_zhang import streams
from feldman_zhang.dataset import Dataset
from feldman_zhang.errors import DataError


def load(source: str, data_dir: str = '', num_classes: int = 0,
         download: bool = False) -> Dataset:
  """Loads and checks the data set named by `source` (see sources).

  num_classes: 0 takes the data set's own count; otherwise every label must
    lie in [0, num_classes).
  """
  kind, _, arg = source.partition(':')
  if kind == 'digits' and not arg:
    ds = sources.digits()
  elif kind == 'idx' and arg:
    ds = sources.idx(arg)
  elif kind == 'npz' and arg:
    ds = sources.npz(arg, num_classes)
  elif kind == 'tfds' and arg:
    ds = sources.tfds(arg, data_dir, download)
  elif kind == 'random' and arg:
    ds = sources.random(arg)
  else:
    raise DataError(f'unknown data source {source!r}: expected digits, '
                    'idx:<dir>, npz:<file>, tfds:<name> or '
                    'random:HxWxC:classes:n:n_test')
  if num_classes:
    ds = dataclasses.replace(ds, num_classes=num_classes)
  return _checked(ds)


MAX_CLASSES = 1 << 20


def _checked(ds: Dataset) -> Dataset:
  """Normalizes dtypes and layout; rejects what would train silently wrong."""
  arrays = {}
  for split in ('train', 'test'):
    x, y = getattr(ds, f'x_{split}'), getattr(ds, f'y_{split}')
    x = np.asarray(x)
    if x.ndim == 3:
      x = x[..., None]
    if x.ndim != 4:
      raise DataError(f'{ds.name}: x_{split} must be (N, H, W[, C]), '
                      f'got shape {x.shape}')
    if x.dtype != np.uint8:
      raise DataError(f'{ds.name}: x_{split} must be uint8, got {x.dtype}')
    if 0 in x.shape[1:]:
      raise DataError(f'{ds.name}: x_{split} images have an empty side: '
                      f'shape {x.shape}')
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(x):
      raise DataError(f'{ds.name}: y_{split} must be ({len(x)},), '
                      f'got shape {y.shape}')
    if len(y) == 0:
      raise DataError(f'{ds.name}: the {split} split is empty')
    if not np.issubdtype(y.dtype, np.integer):
      raise DataError(f'{ds.name}: y_{split} must hold integers, got {y.dtype}')
    bad = (y < 0) | (y >= ds.num_classes)
    if bad.any():
      raise DataError(
          f'{ds.name}: {int(bad.sum())} {split} labels out of range '
          f'[0, {ds.num_classes}), e.g. {int(y[bad][0])} at index '
          f'{int(np.flatnonzero(bad)[0])}')
    arrays[f'x_{split}'] = np.ascontiguousarray(x)
    arrays[f'y_{split}'] = y.astype(np.int32)
  if len(np.unique(arrays['y_train'])) < 2:
    raise DataError(f'{ds.name}: every training label is '
                    f'{int(arrays["y_train"][0])}: one class leaves nothing '
                    'to classify')
  if ds.num_classes > MAX_CLASSES:
    raise DataError(f'{ds.name}: {ds.num_classes} classes (at most '
                    f'{MAX_CLASSES:,}: the logits are dense)')
  if arrays['x_train'].shape[1:] != arrays['x_test'].shape[1:]:
    raise DataError(f'{ds.name}: train images {arrays["x_train"].shape[1:]} '
                    f'and test images {arrays["x_test"].shape[1:]} differ')
  return dataclasses.replace(ds, **arrays)


def from_config(config) -> Dataset:
  """The data set a run trains on, label noise included.

  config: a ConfigDict, or a run's recorded one (config.from_record).
  """
  d, seed = config['data'], config['seed']
  ds = load(d['source'], d['data_dir'], d['num_classes'], d['download'])
  if d['label_noise']:
    if ds.num_classes < 2:
      raise DataError(f'data.label_noise needs 2 or more classes; '
                      f'{ds.name} has {ds.num_classes}')
    ds = with_label_noise(ds, d['label_noise'], seed)
  return ds


def with_label_noise(ds: Dataset, fraction: float, seed: int) -> Dataset:
  """Replaces round(fraction * n) training labels, chosen by the seed, each
  with a uniformly drawn *different* class; records which in `corrupted`."""
  rng = np.random.default_rng(np.random.SeedSequence([seed, streams.LABEL_NOISE]))
  n = ds.num_train
  picked = rng.choice(n, int(round(fraction * n)), replace=False)
  y = ds.y_train.copy()
  shift = rng.integers(1, ds.num_classes, len(picked))
  y[picked] = (y[picked] + shift) % ds.num_classes
  corrupted = np.zeros(n, bool)
  corrupted[picked] = True
  return dataclasses.replace(ds, y_train=y, corrupted=corrupted)
