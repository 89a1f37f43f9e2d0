"""The data sources: each file format or library read into a `Dataset`.

data.load picks one by its source string and checks what it returns. Every
reader returns uint8 images (N, H, W, C) and integer labels (N,), with a
fixed train/test split. Sources:

  digits            scikit-learn's bundled 8x8 digits (offline default).
  idx:<dir>         MNIST-format IDX files, gzip or not.
  npz:<file>        arrays x_train, y_train, x_test, y_test (num_classes opt.).
  tfds:<name>       TensorFlow Datasets (mnist, cifar10, cifar100,
                    imagenet_resized/32x32, ...), read from `data_dir`.
  random:HxWxC:classes:n:n_test
                    seeded random images and labels of a real data set's
                    shape, for timing (e.g. random:32x32x3:10:50000:10000).
"""

import gzip
import logging as std_logging
import os
import zipfile
import zlib

import numpy as np

from feldman_zhang.dataset import Dataset
from feldman_zhang.errors import DataError


# -- digits -------------------------------------------------------------------

DIGITS_TEST_SIZE = 497  # 1797 - 1300: a round training set of 1300.
DIGITS_SPLIT_SEED = 0


def digits() -> Dataset:
  """scikit-learn's 1797 8x8 digits, split 1300/497, stratified, seed 0.

  Pixel values 0..16 are rescaled to 0..255 so every source is uint8.
  """
  try:
    from sklearn import datasets as skdatasets
  except ImportError as e:
    raise DataError('source digits needs scikit-learn: pip install '
                    'scikit-learn') from e
  bunch = skdatasets.load_digits()
  x = np.round(bunch.images * (255 / 16)).astype(np.uint8)[..., None]
  y = bunch.target.astype(np.int32)
  train, test = digits_split(y)
  return Dataset('digits', x[train], y[train], x[test], y[test], 10)


def digits_split(y=None) -> tuple[np.ndarray, np.ndarray]:
  """(train (1300,), test (497,)) int: the indices into scikit-learn's
  load_digits() of our digits' training and test examples, in our order,
  so an example's index in a run maps back: train index i is
  load_digits().images[digits_split()[0][i]]. y: load_digits().target."""
  if y is None:
    from sklearn import datasets as skdatasets  # pylint: disable=g-import-not-at-top
    y = skdatasets.load_digits().target
  test = _stratified_test_indices(y, DIGITS_TEST_SIZE, DIGITS_SPLIT_SEED)
  return np.setdiff1d(np.arange(len(y)), test), test


def _stratified_test_indices(y, size, seed):
  """`size` indices, each class in proportion, chosen by a seeded shuffle."""
  rng = np.random.default_rng(seed)
  classes, counts = np.unique(y, return_counts=True)
  quota = np.floor(counts * size / len(y)).astype(int)
  # Largest remainders take the leftover places, so the sizes add up exactly.
  rest = size - quota.sum()
  quota[np.argsort(-(counts * size / len(y) - quota), kind='stable')[:rest]] += 1
  picks = [rng.permutation(np.flatnonzero(y == c))[:q]
           for c, q in zip(classes, quota)]
  return np.sort(np.concatenate(picks))


# -- IDX (MNIST format) -------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: '>i2', 0x0C: '>i4',
               0x0D: '>f4', 0x0E: '>f8'}
_IDX_FILES = {
    'x_train': 'train-images-idx3-ubyte', 'y_train': 'train-labels-idx1-ubyte',
    'x_test': 't10k-images-idx3-ubyte', 'y_test': 't10k-labels-idx1-ubyte'}


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (gzip if its name ends in .gz) into an array."""
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      raw = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f'cannot read IDX file {path}: {e}') from e
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise DataError(f'{path} is not an IDX file (bad magic number)')
  ndim = raw[3]
  shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], 'big')
                for i in range(ndim))
  dtype = np.dtype(_IDX_DTYPES[raw[2]])
  offset = 4 + 4 * ndim
  if len(raw) - offset != int(np.prod(shape)) * dtype.itemsize:
    raise DataError(f'{path}: header says {shape} but the file holds '
                    f'{len(raw) - offset} bytes of data (truncated?)')
  return np.frombuffer(raw, dtype, offset=offset).reshape(shape)


def idx(directory: str) -> Dataset:
  if not os.path.isdir(directory):
    raise DataError(f'IDX directory {directory} does not exist')
  arrays = {}
  for key, stem in _IDX_FILES.items():
    for name in (stem + '.gz', stem):
      if os.path.exists(os.path.join(directory, name)):
        arrays[key] = read_idx(os.path.join(directory, name))
        break
    else:
      raise DataError(f'IDX directory {directory} has no {stem}[.gz]')
  return Dataset(f'idx:{directory}', num_classes=10, **arrays)


# -- npz ----------------------------------------------------------------------


def npz(path: str, declared: int = 0) -> Dataset:
  """declared: data.num_classes (0: none), which may allow empty classes."""
  if not os.path.isfile(path):
    raise DataError(f'npz file {path} does not exist')
  if not zipfile.is_zipfile(path):
    raise DataError(f'{path} is not an npz file (not a zip archive of .npy '
                    'arrays)')
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except Exception as e:  # zipfile, zlib and numpy raise many types.
    raise DataError(f'cannot read npz file {path}: {e}') from e
  missing = {'x_train', 'y_train', 'x_test', 'y_test'} - set(arrays)
  if missing:
    raise DataError(f'{path} lacks arrays {sorted(missing)}')
  num_classes = arrays.pop('num_classes', np.int64(0))
  if num_classes.ndim or not np.issubdtype(num_classes.dtype, np.integer):
    raise DataError(f'{path}: num_classes must be one integer, not '
                    f'{num_classes.dtype}{num_classes.shape}')
  num_classes = int(num_classes)
  arrays = {k: arrays[k] for k in ('x_train', 'y_train', 'x_test', 'y_test')}
  if not num_classes:
    y = [np.asarray(arrays[k]) for k in ('y_train', 'y_test')]
    if all(np.issubdtype(a.dtype, np.integer) and a.size for a in y):
      num_classes = 1 + int(max(a.max() for a in y))
      seen = np.unique(y[0])
      if not declared and len(seen) < num_classes and min(seen) >= 0:
        # A stray label would silently make classes nobody trains on.
        empty = np.setdiff1d(np.arange(min(num_classes, 1 << 20)), seen)
        raise DataError(
            f'{path}: labels up to {num_classes - 1} make {num_classes} '
            f'classes, but {num_classes - len(seen)} of them (e.g. '
            f'{int(empty[0])}) have no training example; put num_classes in '
            'the file or set --config.data.num_classes if that is meant')
  return Dataset(f'npz:{path}', num_classes=num_classes, **arrays)


# -- random -------------------------------------------------------------------


def random(spec: str) -> Dataset:
  try:
    shape, classes, n, n_test = spec.split(':')
    shape = tuple(int(d) for d in shape.split('x'))
    classes, n, n_test = int(classes), int(n), int(n_test)
    assert len(shape) == 3 and min(shape) > 0 and classes > 1
    assert n > 0 and n_test > 0
  except (ValueError, AssertionError) as e:
    raise DataError(f'bad random source {spec!r}: expected '
                    'HxWxC:classes:n:n_test, e.g. 32x32x3:10:50000:10000') from e
  rng = np.random.default_rng(0)
  x = lambda k: rng.integers(0, 256, (k, *shape), np.uint8)
  y = lambda k: rng.integers(0, classes, k).astype(np.int32)
  return Dataset(f'random:{spec}', x(n), y(n), x(n_test), y(n_test), classes)


# -- TFDS ---------------------------------------------------------------------


def tfds(name: str, data_dir: str, download: bool) -> Dataset:
  """Reads a TFDS data set through its random-access source (no TensorFlow).

  Data prepared in the TFRecord format is read through TensorFlow when it is
  installed (`pip install feldman_zhang[tf]`).
  """
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise DataError('tfds sources need tensorflow-datasets: pip install '
                    'tensorflow-datasets') from e
  # The shell leaves ~ in --config.data.data_dir=~/x as it is.
  data_dir = os.path.expanduser(data_dir)
  _quiet_tfds_probes()
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except Exception as e:  # TFDS raises several types for unknown names.
    # Its message lists every data set it knows: keep the first line and
    # its guess.
    lines = str(e).splitlines()
    message = ' '.join([lines[0]] + [l.strip() for l in lines[1:]
                                     if 'Did you mean' in l]) if lines else ''
    raise DataError(f'unknown TFDS data set {name!r}: {message}') from e
  # The directory TFDS looked in names data_dir, TFDS_DATA_DIR or its default.
  where = (f'data_dir={data_dir or "(TFDS default)"} '
           f'(looked in {builder.data_dir})')
  if download and not builder.is_prepared():
    try:
      builder.download_and_prepare(
          file_format=tfds.core.FileFormat.ARRAY_RECORD)
    except Exception as e:  # network, disk and TFDS errors alike
      raise DataError(f'TFDS could not download and prepare {name!r} under '
                      f'{where}: {type(e).__name__}: '
                      f'{" ".join(str(e).split())[:300]}') from e
  test_split = 'test' if name.split('/')[0] != 'imagenet_resized' else 'validation'
  arrays = {}
  for split, tfds_split in (('train', 'train'), ('test', test_split)):
    try:
      source = builder.as_data_source(split=tfds_split)
      examples = [source[i] for i in range(len(source))]
      arrays[f'x_{split}'] = np.stack([e['image'] for e in examples])
      arrays[f'y_{split}'] = np.asarray([e['label'] for e in examples])
    except Exception as e:  # pylint: disable=broad-except
      if not builder.is_prepared():
        raise DataError(
            f'TFDS data set {name!r} is not prepared under {where}; '
            'prepare it there on a machine with network access (tfds build '
            f'{name} --data_dir=DIR --file_format=array_record) or set '
            'config.data.download=True') from e
      arrays.update(_tfds_through_tensorflow(builder, split, tfds_split, e))
  num_classes = builder.info.features['label'].num_classes
  return Dataset(f'tfds:{name}', num_classes=num_classes, **arrays)


def _drop_tfds_probe(record) -> bool:
  """False for TFDS's word on a folder it probed for a data set ("Variant
  folder ... has no dataset_info.json"): where the data is missing,
  DataError says so and where, in one line."""
  return not ('tensorflow_datasets' in record.pathname and
              'dataset_info.json' in record.getMessage())


def _quiet_tfds_probes():
  logger = std_logging.getLogger('absl')
  if _drop_tfds_probe not in logger.filters:
    logger.addFilter(_drop_tfds_probe)


def _tfds_through_tensorflow(builder, split, tfds_split, cause):
  try:
    import tensorflow_datasets as tfds
    ds = builder.as_dataset(split=tfds_split, batch_size=-1)
    batch = tfds.as_numpy(ds)
  except Exception as e:
    raise DataError(
        f'TFDS data set {builder.name!r} under {builder.data_dir} cannot be '
        f'read without TensorFlow ({cause}); install feldman_zhang[tf] or '
        're-prepare it with --file_format=array_record') from e
  return {f'x_{split}': batch['image'], f'y_{split}': batch['label']}
