"""Per-model prediction chunks: chunks/models_A-B.npz, models A..B-1.

Each chunk holds consecutive models' subset masks, correctness, p of the
true label, per-view margins and epoch losses, with a sha256 of its arrays
checked on every read. Written atomically (store.atomic_write).
"""

import contextlib
import glob
import hashlib
import os
import re

import numpy as np
from absl import logging

from feldman_zhang import store
from feldman_zhang.errors import StoreError

# 2: chunks carry each model's margins per view and the id of the run that
# wrote them (readers of version-1 chunks get neither).
FORMAT_VERSION = 2
_CHUNK_RE = re.compile(r'models_(\d+)-(\d+)\.npz$')
# Bits are packed along the example axis: a (t, n) bool matrix costs n/8 bytes
# per model, so 2,000 MNIST models keep all their predictions in ~40 MB.
_PACKED = ('masks', 'train_correct', 'test_correct')


def chunk_path(workdir: str, start: int, stop: int) -> str:
  return store.Workdir(workdir).chunk(start, stop)


def _checksum(arrays) -> str:
  h = hashlib.sha256()
  for k in sorted(arrays):
    a = np.ascontiguousarray(arrays[k])
    h.update(f'{k}{a.shape}{a.dtype.str}'.encode())
    h.update(a.tobytes())
  return h.hexdigest()


# Margins are stored as float16: BENCHMARKS.md ("Margins: float16 against
# float32") measures what the rounding changes in the attacks' AUC and LDS.
MARGIN_DTYPE = np.float16


def write_chunk(workdir: str, model_ids, masks, train_correct, test_correct,
                train_ptrue, test_ptrue, loss, train_margin=None,
                test_margin=None, run_id: str = '') -> str:
  """Writes the predictions of consecutive models; returns the file's path.

  Args:
    model_ids: (K,) consecutive global model ids.
    masks: (K, n) bool, subset membership.
    train_correct, test_correct: (K, n), (K, n_test) bool.
    train_ptrue, test_ptrue: same shapes, probability of the true label.
    loss: (K, epochs) float, mean training loss of each epoch.
    train_margin, test_margin: (K, n, V), (K, n_test, V) float, each view's
      margin of the true class (evaluation.margin), or None.
    run_id: identity.run_id of the run writing it: a reader sets aside a
      chunk of another run (`read_chunk`'s expect).
  """
  model_ids = np.asarray(model_ids, np.int64)
  if np.any(np.diff(model_ids) != 1):
    raise ValueError('a chunk holds consecutive model ids')
  arrays = dict(
      model_ids=model_ids,
      n=np.int64(masks.shape[1]), n_test=np.int64(test_correct.shape[1]),
      train_ptrue=np.asarray(train_ptrue, np.float16),
      test_ptrue=np.asarray(test_ptrue, np.float16),
      loss=np.asarray(loss, np.float32), run_id=np.array(str(run_id)))
  if train_margin is not None:
    arrays['train_margin'] = np.asarray(train_margin, MARGIN_DTYPE)
    arrays['test_margin'] = np.asarray(test_margin, MARGIN_DTYPE)
  for k, v in (('masks', masks), ('train_correct', train_correct),
               ('test_correct', test_correct)):
    arrays[k] = np.packbits(np.asarray(v, bool), axis=1)
  arrays['checksum'] = np.array(_checksum(arrays))
  path = chunk_path(workdir, int(model_ids[0]), int(model_ids[-1]) + 1)
  store.atomic_write(path, lambda f: np.savez(f, **arrays))
  return path


class ForeignChunkError(StoreError):
  """A sound chunk that another run wrote (or of other shapes)."""


def read_chunk(path: str, expect: dict | None = None) -> dict:
  """The arrays of one chunk, unpacked; StoreError if torn or corrupt,
  ForeignChunkError if it does not match expect: {'run_id': str, 'n': int,
  'n_test': int} (any subset of the keys)."""
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except Exception as e:  # zipfile, zlib and numpy raise many types.
    raise StoreError(f'chunk {path} is unreadable: {e}') from e
  checksum = str(arrays.pop('checksum', ''))
  if checksum != _checksum(arrays):
    raise StoreError(f'chunk {path} fails its checksum')
  named = _CHUNK_RE.search(os.path.basename(path))
  ids = arrays['model_ids']
  if named and (len(ids) != int(named[2]) - int(named[1]) or
                (len(ids) and int(ids[0]) != int(named[1]))):
    # A chunk copied over another: sound, but not the models its name says.
    got = f'{ids[0]}-{ids[-1] + 1}' if len(ids) else 'none'
    raise StoreError(f'chunk {path} holds models {got}, not the models '
                     f'{int(named[1])}-{int(named[2])} its name says')
  n, n_test = int(arrays.pop('n')), int(arrays.pop('n_test'))
  run_id = str(arrays.pop('run_id', ''))
  if expect:
    got = dict(run_id=run_id, n=n, n_test=n_test)
    wrong = [k for k in expect if got[k] != expect[k]]
    if wrong:
      raise ForeignChunkError(
          f'chunk {path} belongs to another run ({", ".join(wrong)} '
          f'{"differ" if len(wrong) > 1 else "differs"})')
  arrays['run_id'] = run_id  # so write_chunk(**read_chunk(path)) copies it
  for k in _PACKED:
    count = n_test if k == 'test_correct' else n
    # unpackbits gives 0/1 bytes: viewed as bool, not copied.
    arrays[k] = np.unpackbits(arrays[k], axis=1, count=count).view(bool)
  return arrays


def list_chunks(workdir: str):
  """[(start, stop, path)] of the chunk files, by start."""
  out = []
  for path in glob.glob(os.path.join(store.Workdir(workdir).chunks, 'models_*.npz')):
    match = _CHUNK_RE.search(os.path.basename(path))
    if match:
      out.append((int(match.group(1)), int(match.group(2)), path))
  return sorted(out)


def stored_models(workdir: str, num_models: int, quarantine: bool,
                  expect: dict | None = None):
  """(num_models,) bool: which models have a readable chunk of this run.

  A corrupt chunk, or one that does not match expect (read_chunk: another
  run's, copied in), is reported and, with quarantine, moved to
  chunks/corrupt, so its models train again; quarantine also removes the
  temporary files of killed writes (the leader scans while no process
  writes).
  """
  have = np.zeros(num_models, bool)
  w = store.Workdir(workdir)
  if quarantine:
    for tmp in w.temp_files():
      with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)
  for start, stop, path in list_chunks(workdir):
    try:
      read_chunk(path, expect)
    except StoreError as e:
      if quarantine:
        logging.warning('%s; moving it to chunks/corrupt and retraining', e)
        os.makedirs(w.corrupt, exist_ok=True)
        os.replace(path, os.path.join(w.corrupt, os.path.basename(path)))
      continue
    have[start:min(stop, num_models)] = True
  return have


def load_predictions(workdir: str, num_models: int = 0,
                     expect: dict | None = None) -> dict:
  """All stored predictions, ordered by model id.

  Args:
    workdir: the run's directory.
    num_models: if > 0, only models 0..num_models-1, which must all be there.
    expect: what every chunk must match (read_chunk); StoreError if one
      does not.
  Returns:
    dict of numpy arrays: model_ids (t,), masks (t, n) bool, train_correct
    (t, n) bool, test_correct (t, n_test) bool, train_ptrue (t, n) float16,
    test_ptrue (t, n_test) float16, loss (t, epochs) float32, and where
    every chunk has them (format 2), train_margin (t, n, V) and test_margin
    (t, n_test, V) float16.
  """
  chunks = [c for c in list_chunks(workdir)
            if not num_models or c[0] < num_models]
  if not chunks:
    raise StoreError(f'no prediction chunks in {workdir}/chunks')
  parts = [read_chunk(path, expect) for _, _, path in chunks]
  for p in parts:
    del p['run_id']
  shared = set.intersection(*(set(p) for p in parts))
  if any(set(p) != shared for p in parts):  # margins of format-2 chunks only
    parts = [{k: p[k] for k in shared} for p in parts]
  # Copies are avoided where they would change nothing: at MNIST scale each
  # full copy of the predictions costs about a second.
  out = (parts[0] if len(parts) == 1 else
         {k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
  order = np.argsort(out['model_ids'], kind='stable')
  if np.any(order != np.arange(len(order))):
    out = {k: v[order] for k, v in out.items()}
  ids = out['model_ids']
  if np.any(np.diff(ids) == 0):
    raise StoreError(f'{workdir}/chunks holds model {ids[1:][np.diff(ids) == 0][0]} '
                     'twice')
  if num_models:
    keep = ids < num_models
    if not keep.all():
      out = {k: v[keep] for k, v in out.items()}
    if len(out['model_ids']) != num_models:
      missing = sorted(set(range(num_models)) - set(out['model_ids'].tolist()))
      raise StoreError(f'{workdir}/chunks lacks {len(missing)} of models '
                       f'0..{num_models - 1}, e.g. {missing[0]}')
  return out
