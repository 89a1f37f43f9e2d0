import gzip
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import MNIST_DIR
from conftest import ROOT
from feldman_zhang import data
from feldman_zhang import errors
from feldman_zhang import sources

CIFAR10_LOSSLESS = os.path.join(ROOT, '..', 'shared', 'datasets',
                                'cifar10_lossless')

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851,
                      5949]


def test_digits_split_is_fixed_and_stratified():
  a, b = data.load('digits'), data.load('digits')
  assert a.x_train.shape == (1300, 8, 8, 1) and a.x_test.shape == (497, 8, 8, 1)
  assert a.x_train.dtype == np.uint8 and a.y_train.dtype == np.int32
  assert a.x_train.max() == 255 and a.num_classes == 10
  np.testing.assert_array_equal(a.y_test, b.y_test)
  assert a.fingerprint() == b.fingerprint()
  counts = np.bincount(a.y_test, minlength=10)
  assert counts.min() >= 48 and counts.max() <= 51  # ~497/10 each.


@pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason='no shared MNIST')
def test_idx_reads_real_mnist():
  ds = data.load(f'idx:{MNIST_DIR}')
  assert ds.x_train.shape == (60000, 28, 28, 1)
  assert ds.x_test.shape == (10000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ds.y_train), MNIST_TRAIN_COUNTS)


def _write_idx(path, array, compress):
  header = bytes([0, 0, 0x08, array.ndim]) + b''.join(
      d.to_bytes(4, 'big') for d in array.shape)
  opener = gzip.open if compress else open
  with opener(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize('compress', [True, False])
def test_idx_plain_and_gzip(tmp_path, compress):
  rng = np.random.default_rng(0)
  arrays = dict(x_train=rng.integers(0, 256, (7, 5, 4)),
                y_train=rng.integers(0, 10, 7),
                x_test=rng.integers(0, 256, (3, 5, 4)),
                y_test=rng.integers(0, 10, 3))
  for key, stem in sources._IDX_FILES.items():
    _write_idx(str(tmp_path / (stem + ('.gz' if compress else ''))),
               arrays[key], compress)
  ds = data.load(f'idx:{tmp_path}')
  np.testing.assert_array_equal(ds.x_train[..., 0], arrays['x_train'])
  np.testing.assert_array_equal(ds.y_test, arrays['y_test'])


def test_idx_truncated(tmp_path):
  path = str(tmp_path / 'x.idx')
  _write_idx(path, np.zeros((4, 3, 3)), compress=False)
  with open(path, 'r+b') as f:
    f.truncate(20)
  with pytest.raises(errors.DataError, match='truncated'):
    sources.read_idx(path)


def test_idx_corrupt_gzip_stream(tmp_path):
  path = str(tmp_path / 'x.idx.gz')
  rng = np.random.default_rng(0)
  # Compressible, as images are: the stream holds Huffman codes to break.
  _write_idx(path, rng.integers(0, 4, (200, 28, 28)) * 60, compress=True)
  raw = bytearray(open(path, 'rb').read())
  causes = set()
  for at in range(40, min(len(raw), 400), 7):  # bytes inside the stream
    bad = raw.copy()
    bad[at] ^= 0xFF
    open(path, 'wb').write(bytes(bad))
    with pytest.raises(errors.DataError) as e:
      sources.read_idx(path)
    causes.add(type(e.value.__cause__).__name__)
  assert 'error' in causes  # zlib.error among them, not only gzip's OSError


def _npz(tmp_path, **overrides):
  rng = np.random.default_rng(0)
  arrays = dict(x_train=rng.integers(0, 256, (20, 4, 4, 3), np.uint8),
                y_train=np.arange(20) % 4,
                x_test=rng.integers(0, 256, (6, 4, 4, 3), np.uint8),
                y_test=np.arange(6) % 4)
  arrays.update(overrides)
  np.savez(tmp_path / 'd.npz', **arrays)
  return f'npz:{tmp_path / "d.npz"}'


def test_npz(tmp_path):
  ds = data.load(_npz(tmp_path))
  assert ds.num_classes == 4 and ds.x_test.shape == (6, 4, 4, 3)
  ds = data.load(_npz(tmp_path, num_classes=np.int64(7)))
  assert ds.num_classes == 7


@pytest.mark.skipif(not os.path.isdir(CIFAR10_LOSSLESS),
                    reason='no lossless CIFAR-10 copy beside the checkout '
                    '(../shared/datasets/cifar10_lossless)')
def test_npz_reads_the_lossless_cifar10(tmp_path):
  """The README's path: decode the copy with its own script, load it as
  npz:; CIFAR-10's published shapes, class counts and channel means."""
  path = str(tmp_path / 'cifar10_lossless.npz')
  subprocess.run([sys.executable, os.path.join(CIFAR10_LOSSLESS, 'to_npz.py'),
                  path], check=True, capture_output=True, timeout=300)
  ds = data.load(f'npz:{path}')
  assert ds.x_train.shape == (50000, 32, 32, 3)
  assert ds.x_test.shape == (10000, 32, 32, 3)
  assert ds.x_train.dtype == ds.x_test.dtype == np.uint8
  assert ds.num_classes == 10
  np.testing.assert_array_equal(np.bincount(ds.y_train), [5000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)
  means = ds.x_train.mean(axis=(0, 1, 2), dtype=np.float64) / 255
  np.testing.assert_allclose(means, [0.4914, 0.4822, 0.4465], atol=5e-5)


@pytest.mark.parametrize('source, message', [
    ('cifar', 'unknown data source'),
    ('idx:/nonexistent/dir', 'does not exist'),
    ('npz:/nonexistent.npz', 'does not exist'),
])
def test_bad_sources(source, message):
  with pytest.raises(errors.DataError, match=message):
    data.load(source)


def test_bad_arrays(tmp_path):
  with pytest.raises(errors.DataError, match='out of range'):
    data.load(_npz(tmp_path, y_test=np.array([0, 1, 2, 3, 9, -1])),
              num_classes=4)
  with pytest.raises(errors.DataError, match='uint8'):
    data.load(_npz(tmp_path, x_train=np.zeros((20, 4, 4, 3), np.float32)))
  with pytest.raises(errors.DataError, match='differ'):
    data.load(_npz(tmp_path, x_test=np.zeros((6, 4, 4, 1), np.uint8)))
  with pytest.raises(errors.DataError, match='out of range'):
    data.load('digits', num_classes=5)


@pytest.mark.parametrize('name, shape, classes', [
    ('mnist', (28, 28, 1), 10),
    ('cifar10', (32, 32, 3), 10),
    ('cifar100', (32, 32, 3), 100),
    ('imagenet_resized/32x32', (32, 32, 3), 1000),  # test split: validation
])
def test_tfds_mock(name, shape, classes):
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=12):
    ds = data.load(f'tfds:{name}', data_dir='/nonexistent')
  assert ds.x_train.shape == (12, *shape) and ds.x_test.shape == (12, *shape)
  assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
  assert ds.num_classes == classes
  assert ds.y_train.min() >= 0 and ds.y_train.max() < classes


def test_tfds_not_prepared_names_data_dir(tmp_path):
  pytest.importorskip('tensorflow_datasets')
  with pytest.raises(errors.DataError, match=f'not prepared.*data_dir={tmp_path}'):
    data.load('tfds:mnist', data_dir=str(tmp_path))


def test_tfds_probe_warnings_stay_quiet(tmp_path, caplog):
  # A version folder without its dataset_info.json (an unfinished prepare):
  # TFDS warns of it; the one-line DataError already says what is missing.
  pytest.importorskip('tensorflow_datasets')
  (tmp_path / 'mnist' / '3.0.1').mkdir(parents=True)
  with caplog.at_level(logging.INFO):
    with pytest.raises(errors.DataError, match='not prepared'):
      data.load('tfds:mnist', data_dir=str(tmp_path))
  assert 'dataset_info.json' not in caplog.text


def test_tfds_unknown_name_is_one_line_with_tfds_guess(tmp_path):
  pytest.importorskip('tensorflow_datasets')
  with pytest.raises(errors.DataError) as e:
    data.load('tfds:cifar_10', data_dir=str(tmp_path))
  assert 'Did you mean' in str(e.value) and 'cifar10' in str(e.value)
  assert '\n' not in str(e.value) and len(str(e.value)) < 300


def test_tfds_data_dir_with_a_tilde_is_the_home_directory(monkeypatch,
                                                           tmp_path):
  pytest.importorskip('tensorflow_datasets')
  monkeypatch.setenv('HOME', str(tmp_path))
  with pytest.raises(errors.DataError, match=f'looked in {tmp_path}/tfds/mnist'):
    data.load('tfds:mnist', data_dir='~/tfds')


def test_random_source_for_timing():
  ds = data.load('random:32x32x3:100:50:20')
  assert ds.x_train.shape == (50, 32, 32, 3) and ds.x_test.shape == (20, 32, 32, 3)
  assert ds.num_classes == 100 and ds.y_train.max() < 100
  assert ds.fingerprint() == data.load('random:32x32x3:100:50:20').fingerprint()
  with pytest.raises(errors.DataError, match='bad random source'):
    data.load('random:32x32:10:5:5')


def test_digits_indices_map_back_to_scikit_learn():
  from sklearn import datasets as skdatasets  # pylint: disable=g-import-not-at-top
  bunch = skdatasets.load_digits()
  ds = data.load('digits')
  train, test = sources.digits_split()
  assert len(train) == ds.num_train and len(test) == ds.num_test
  assert not set(train) & set(test) and len(set(train) | set(test)) == 1797
  np.testing.assert_array_equal(ds.y_train, bunch.target[train])
  np.testing.assert_array_equal(ds.y_test, bunch.target[test])
  np.testing.assert_array_equal(
      ds.x_train[..., 0], np.round(bunch.images[train] * (255 / 16)))


def _npz_file(path, y_train, y_test, **extra):
  rng = np.random.default_rng(0)
  np.savez(path, x_train=rng.integers(0, 256, (len(y_train), 4, 4), np.uint8),
           y_train=np.asarray(y_train), x_test=rng.integers(
               0, 256, (len(y_test), 4, 4), np.uint8),
           y_test=np.asarray(y_test), **extra)
  return str(path)


def test_bad_npz_inputs_are_named(tmp_path):
  junk = tmp_path / 'junk.npz'
  junk.write_bytes(os.urandom(256))
  with pytest.raises(errors.DataError, match='is not an npz file'):
    data.load(f'npz:{junk}')
  stray = _npz_file(tmp_path / 'stray.npz', [0, 1, 17, 0, 1], [0, 1])
  with pytest.raises(errors.DataError, match='have no training example'):
    data.load(f'npz:{stray}')
  assert data.load(f'npz:{stray}', num_classes=18).num_classes == 18
  big = _npz_file(tmp_path / 'big.npz', [0, 1, 2**31 - 1], [0])
  with pytest.raises(errors.DataError, match='no training example'):
    data.load(f'npz:{big}')
  one = _npz_file(tmp_path / 'one.npz', [0, 0, 0], [0], num_classes=2)
  with pytest.raises(errors.DataError, match='one class leaves nothing'):
    data.load(f'npz:{one}')
  np.savez(tmp_path / 'empty.npz', x_train=np.zeros((3, 0, 0), np.uint8),
           y_train=np.array([0, 1, 0]), x_test=np.zeros((1, 0, 0), np.uint8),
           y_test=np.array([0]))
  with pytest.raises(errors.DataError, match='empty side'):
    data.load(f'npz:{tmp_path / "empty.npz"}')
