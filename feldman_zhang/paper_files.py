"""The paper's released files: per-class influence blocks and pair lists.

Feldman & Zhang released their estimates in two layouts, which this module
writes and reads:

  per-class file (one npz)   infl_matrix_class{K} (n_K, n_test_K) float32,
                             tr_classidx_{K}, tt_classidx_{K} (int64 indices
                             into the training / test set), tr_labels (n,),
                             tt_labels (n_test,), tr_mem (n,) float32
  pair file (one npz)        tr_idx, tt_idx (P,) int64, infl, mem (P,)
                             float32 (what analysis/export_pairs.py writes)

Influence only matters within a class (a training example helps test
examples of its own label), so the per-class blocks hold what the dense
(n, n_test) matrix says at a fraction of its size: ImageNet-32's 1,000
classes of ~1,281 x 50 are 256 MB where the matrix would be 256 GB.
`infl_per_class` computes the blocks from the stored predictions, class by
class on the device, with the estimate's own kernel: each block is, bit for
bit, the dense estimate's restriction to those rows and columns.
"""

import re
import typing
import zipfile

import numpy as np

from feldman_zhang import diagnostics
from feldman_zhang import errors
from feldman_zhang import estimate as estimate_lib
from feldman_zhang import store

PAIR_FIELDS = ('tr_idx', 'tt_idx', 'infl', 'mem')
_CLASS_KEY = re.compile(r'(infl_matrix_class|tr_classidx_|tt_classidx_)(\d+)$')


class ClassBlock(typing.NamedTuple):
  """Influence of class `label`'s training examples on its test examples.

  tr_idx: (n_K,) int64 and tt_idx: (n_test_K,) int64, ascending indices
  into the training and test set; infl: (n_K, n_test_K) float32.
  """
  label: int
  tr_idx: np.ndarray
  tt_idx: np.ndarray
  infl: np.ndarray


# -- computing ----------------------------------------------------------------


def _padded(x, size, axis):
  """x zero-padded (False for bools) along axis to size."""
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return np.pad(x, pad)


def infl_per_class(masks, test_correct, y_train, y_test, num_classes,
                   classes=None, *, loss=None):
  """Yields the ClassBlock of each class, computed on the device.

  Each block is the estimate's own tile kernel (estimate.influence_block)
  applied to the class's columns of masks and test_correct: every entry of
  that kernel depends only on its training column, its test column and the
  number of models t, through exact integer counts and one correctly
  rounded division, so the block equals the dense estimate's rows tr_idx
  and columns tt_idx bit for bit (an empty group's mean is 1/2 there too).
  Blocks are padded to the largest class's shape, so the kernel compiles
  once, and the next block is dispatched before the last is copied out.
  Only one class's columns are ever on the device or the host at a time.

  Args:
    masks: (t, n) bool, which models trained on which example.
    test_correct: (t, n_test) bool, which models classify test example j.
    y_train: (n,) int, y_test: (n_test,) int, labels in [0, num_classes).
    num_classes: the data set's number of classes.
    classes: the classes to compute (default: all), in this order.
    loss: (t, epochs) the models' recorded training losses, or None: models
      with a non-finite loss in any epoch are left out, as the estimate
      leaves them out (diagnostics.converged).
  Yields:
    ClassBlock per class; a class without training or test examples gives
    an empty block.
  """
  masks = np.asarray(masks, bool)
  test_correct = np.asarray(test_correct, bool)
  if loss is not None:
    valid = diagnostics.converged(np.asarray(loss))
    if not valid.all():
      masks, test_correct = masks[valid], test_correct[valid]
  if len(masks) == 0:
    raise ValueError('no models to estimate from')
  y_train, y_test = np.asarray(y_train), np.asarray(y_test)
  classes = range(num_classes) if classes is None else classes
  members = [(int(k), np.flatnonzero(y_train == k).astype(np.int64),
              np.flatnonzero(y_test == k).astype(np.int64)) for k in classes]
  if not members:
    return
  rows = max(1, max(len(tr) for _, tr, _ in members))
  cols = max(1, max(len(tt) for _, _, tt in members))
  # The same int32 counts _memorization gives the estimate.
  num_in = masks.sum(0, dtype=np.int32)

  def dispatch(tr, tt):
    # pylint: disable-next=protected-access
    block, _ = estimate_lib.influence_block(
        _padded(masks[:, tr], rows, 1), _padded(test_correct[:, tt], cols, 1),
        _padded(num_in[tr], rows, 0), False)
    return block

  pending = None
  for label, tr, tt in members:
    block = dispatch(tr, tt)
    if pending:
      yield _finish(*pending)
    pending = (label, tr, tt, block)
  yield _finish(*pending)


def _finish(label, tr, tt, block):
  infl = np.asarray(block)[:len(tr), :len(tt)]
  return ClassBlock(label, tr, tt, np.ascontiguousarray(infl, np.float32))


# -- files --------------------------------------------------------------------


def _write_member(archive, name, array):
  # What np.savez does for each array, one at a time: the blocks need not
  # all be in memory at once.
  with archive.open(name + '.npy', 'w', force_zip64=True) as f:
    np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)


def write_class_file(path, blocks, y_train, y_test, mem) -> str:
  """Writes the per-class layout (module doc) atomically; returns path.

  blocks: iterable of ClassBlock (e.g. infl_per_class's), written as they
  come; y_train (n,), y_test (n_test,) the labels; mem (n,) the run's
  memorization estimates.
  """
  y_train, y_test = np.asarray(y_train), np.asarray(y_test)
  mem = np.asarray(mem, np.float32)
  if mem.shape != y_train.shape:
    raise ValueError(f'mem is {mem.shape}, the labels {y_train.shape}')

  def write(f):
    with zipfile.ZipFile(f, 'w', zipfile.ZIP_STORED,
                         allowZip64=True) as archive:
      _write_member(archive, 'tr_labels', y_train.astype(np.int64))
      _write_member(archive, 'tt_labels', y_test.astype(np.int64))
      _write_member(archive, 'tr_mem', mem)
      for b in blocks:
        infl = np.asarray(b.infl, np.float32)
        if infl.shape != (len(b.tr_idx), len(b.tt_idx)):
          raise ValueError(f'class {b.label}: a {infl.shape} block for '
                           f'{len(b.tr_idx)} x {len(b.tt_idx)} examples')
        _write_member(archive, f'infl_matrix_class{b.label}', infl)
        _write_member(archive, f'tr_classidx_{b.label}',
                      np.asarray(b.tr_idx, np.int64))
        _write_member(archive, f'tt_classidx_{b.label}',
                      np.asarray(b.tt_idx, np.int64))

  store.atomic_write(path, write)
  return path


def _load_npz(path, what):
  try:
    with np.load(path, allow_pickle=False) as f:
      if not hasattr(f, 'files'):
        raise ValueError('a single array, not an npz archive')
      return {k: f[k] for k in f.files}
  except FileNotFoundError as e:
    raise errors.StoreError(f'{path} does not exist') from e
  except Exception as e:  # zipfile, zlib and numpy raise many types.
    raise errors.StoreError(f'{path} is not a readable {what} file '
                            f'({type(e).__name__}: {e})') from e


def _bad(path, what, why):
  return errors.StoreError(f'{path} is not a {what} file: {why}')


def _index(path, what, name, a, bound):
  """a as int64 indices in [0, bound), or StoreError."""
  if a.ndim != 1 or a.dtype.kind not in 'iu':
    raise _bad(path, what, f'{name} is {a.dtype}{a.shape}, not 1-d integers')
  if len(a) and (a.min() < 0 or a.max() >= bound):
    raise _bad(path, what, f'{name} has indices outside [0, {bound})')
  return a.astype(np.int64)


def read_class_file(path) -> dict:
  """The per-class layout (module doc) as a dict.

  Returns:
    tr_labels (n,), tt_labels (n_test,) int64, tr_mem (n,) float32, and
    classes: {K: ClassBlock}, by class. StoreError in one line if the file
    is not of this layout (a missing or misshapen field, an index out of
    range, a block of the wrong shape).
  """
  what = 'per-class influence'
  arrays = _load_npz(path, what)
  for k in ('tr_labels', 'tt_labels', 'tr_mem'):
    if k not in arrays:
      raise _bad(path, what, f'it has no {k}')
    if arrays[k].ndim != 1:
      raise _bad(path, what, f'{k} is {arrays[k].shape}, not 1-d')
  n, n_test = len(arrays['tr_labels']), len(arrays['tt_labels'])
  if arrays['tr_mem'].shape != (n,):
    raise _bad(path, what, f'tr_mem is {arrays["tr_mem"].shape}, tr_labels '
               f'({n},)')
  labels = {}
  for k in arrays:
    match = _CLASS_KEY.match(k)
    if match:
      labels.setdefault(int(match[2]), set()).add(match[1])
  classes = {}
  for label in sorted(labels):
    names = (f'tr_classidx_{label}', f'tt_classidx_{label}',
             f'infl_matrix_class{label}')
    for name in names:
      if name not in arrays:
        raise _bad(path, what, f'class {label} has no {name}')
    tr = _index(path, what, names[0], arrays[names[0]], n)
    tt = _index(path, what, names[1], arrays[names[1]], n_test)
    infl = arrays[names[2]]
    if infl.shape != (len(tr), len(tt)) or infl.dtype.kind != 'f':
      raise _bad(path, what, f'{names[2]} is {infl.dtype}{infl.shape}, not '
                 f'float ({len(tr)}, {len(tt)})')
    classes[label] = ClassBlock(label, tr, tt, infl.astype(np.float32))
  return dict(tr_labels=arrays['tr_labels'].astype(np.int64),
              tt_labels=arrays['tt_labels'].astype(np.int64),
              tr_mem=arrays['tr_mem'].astype(np.float32), classes=classes)


def read_pair_file(path) -> dict:
  """The pair layout (module doc): tr_idx, tt_idx (P,) int64, infl, mem (P,)
  float32; StoreError in one line if a field is missing or misshapen."""
  what = 'influence pair'
  arrays = _load_npz(path, what)
  missing = [k for k in PAIR_FIELDS if k not in arrays]
  if missing:
    raise _bad(path, what, f'it has no {", ".join(missing)} (it needs '
               f'{", ".join(PAIR_FIELDS)})')
  sizes = {arrays[k].shape for k in PAIR_FIELDS}
  if len(sizes) != 1 or len(next(iter(sizes))) != 1:
    raise _bad(path, what, 'its fields are not 1-d of one length ('
               + ', '.join(f'{k} {arrays[k].shape}' for k in PAIR_FIELDS)
               + ')')
  out = {}
  for k in ('tr_idx', 'tt_idx'):
    out[k] = _index(path, what, k, arrays[k], np.iinfo(np.int64).max)
  for k in ('infl', 'mem'):
    if arrays[k].dtype.kind != 'f':
      raise _bad(path, what, f'{k} is {arrays[k].dtype}, not float')
    out[k] = arrays[k].astype(np.float32)
  return out
