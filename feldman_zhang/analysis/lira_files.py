r"""The pools of models the attacks read (`Pool`): a run's converged models
(`run_pool`, from `converged_predictions`, which analysis/lds.py reads too),
or a folder in the layout of the LiRA reference (tensorflow/privacy,
research/mi_lira_2021), so a pool trained there can be attacked here
(`python -m analysis.membership --from_lira_dir`) and ours there:

  DIR/experiment-<k>/keep.npy       (n,) bool: model k trained on example i
  DIR/experiment-<k>/scores/0.npy   (n, V) float32: its score (the margin
                                    phi) of each example in each view

The reference's train.py names its folders experiment-<k>_<count> and
writes one scores file per saved epoch; the last in name order is read.
"""

import os
import re
from typing import NamedTuple

import numpy as np

from feldman_zhang import chunks
from feldman_zhang import diagnostics
from feldman_zhang import errors
from feldman_zhang import store
from feldman_zhang.analysis import runs

_EXPERIMENT = re.compile(r'experiment-(\d+)(?:_\d+)?$')


class Pool(NamedTuple):
  """The models an attack reads: masks (t, n) bool, phi (t, n, V) float
  (each model's margin of each training example in each view), model_ids
  (t,) int64 (the k of experiment-<k>, or the run's model ids)."""
  masks: np.ndarray
  phi: np.ndarray
  model_ids: np.ndarray


def _save(path: str, array) -> None:
  store.atomic_write(path, lambda f: np.save(f, array))


def write_lira_dir(out: str, masks, phi_train, model_ids=None) -> str:
  """The pool in the reference's layout: per model k, out/experiment-<k>/
  keep.npy (n,) bool and out/experiment-<k>/scores/0.npy (n, V) float32.

  masks: (t, n) bool; phi_train: (t, n, V) float ((t, n) reads as V = 1);
  model_ids: (t,) int, the k of each row (default 0..t-1). Returns out.
  """
  masks, phi_train = np.asarray(masks), np.asarray(phi_train)
  if phi_train.ndim == 2:
    phi_train = phi_train[:, :, None]
  if (masks.ndim != 2 or phi_train.ndim != 3 or
      phi_train.shape[:2] != masks.shape):
    raise ValueError(f'masks {masks.shape} and phi {phi_train.shape} are not '
                     '(t, n) and (t, n, V)')
  ids = np.arange(len(masks)) if model_ids is None else np.asarray(model_ids)
  for k, keep, phi in zip(ids, masks, phi_train):
    folder = os.path.join(out, f'experiment-{int(k)}')
    os.makedirs(os.path.join(folder, 'scores'), exist_ok=True)
    _save(os.path.join(folder, 'keep.npy'), np.asarray(keep, bool))
    _save(os.path.join(folder, 'scores', '0.npy'),
          np.asarray(phi, np.float32))
  return out


def _read_experiment(folder: str):
  keep_path = os.path.join(folder, 'keep.npy')
  scores_dir = os.path.join(folder, 'scores')
  if not os.path.isfile(keep_path):
    raise errors.StoreError(f'{keep_path} does not exist')
  names = (sorted(f for f in os.listdir(scores_dir) if f.endswith('.npy'))
           if os.path.isdir(scores_dir) else [])
  if not names:
    raise errors.StoreError(f'{scores_dir} holds no .npy scores')
  # The reference reads the last file in name order (its last epoch).
  scores_path = os.path.join(scores_dir, names[-1])
  try:
    keep, scores = np.load(keep_path), np.load(scores_path)
  except (OSError, ValueError) as e:
    raise errors.StoreError(f'{folder} has an unreadable .npy file '
                            f'({type(e).__name__}: {e})') from e
  if keep.ndim != 1 or keep.dtype.kind not in 'biu':
    raise errors.StoreError(f'{keep_path} is {keep.dtype}{keep.shape}, not '
                            '(n,) bool')
  if scores.ndim == 1:
    scores = scores[:, None]
  if scores.ndim != 2 or len(scores) != len(keep):
    raise errors.StoreError(f'{scores_path} is {scores.shape}, not (n, V) '
                            f'with n = {len(keep)} as its keep.npy')
  return keep.astype(bool), scores.astype(np.float32)


def read_lira_dir(path: str) -> Pool:
  """The Pool of a folder of the reference layout (write_lira_dir, or the
  reference's own experiment-<k>_<count> folders), rows by increasing k;
  phi float32."""
  if not os.path.isdir(path):
    raise errors.StoreError(f'{path} is not a folder')
  found = {}
  for name in os.listdir(path):
    match = _EXPERIMENT.match(name)
    if match and os.path.isdir(os.path.join(path, name)):
      k = int(match.group(1))
      if k in found:
        raise errors.StoreError(f'{path} holds model {k} twice ({found[k]} '
                                f'and {name})')
      found[k] = name
  if not found:
    raise errors.StoreError(f'{path} holds no experiment-<k> folders')
  ids = sorted(found)
  read = [_read_experiment(os.path.join(path, found[k])) for k in ids]
  shapes = {s.shape for _, s in read}
  if len(shapes) > 1:
    raise errors.StoreError(f'{path} is ragged: its models hold scores of '
                            f'shapes {sorted(shapes)}')
  return Pool(np.stack([k for k, _ in read]), np.stack([s for _, s in read]),
              np.asarray(ids, np.int64))


# -- a run's models -----------------------------------------------------------


def converged_predictions(run: runs.Run) -> dict:
  """The stored predictions of the models the run's estimates came from:
  ids below the config's num_models (as the job reads them), diverged ones
  (a non-finite loss, diagnostics.converged) left out as the estimates leave
  them out; rows by model id.

  Returns chunks.load_predictions' dict, margins included. StoreError in one
  line where a chunk is another run's, where the chunks hold no margins (a
  run of store format 1) or where they hold another number of converged
  models than estimates.npz records.
  """
  est = run.estimates
  expect = (dict(run_id=str(est['run_id']), n=len(est['mem']),
                 n_test=run.dataset.num_test) if 'run_id' in est else None)
  preds = chunks.load_predictions(run.workdir, expect=expect)
  if 'train_margin' not in preds:
    raise store.StoreError(
        f'{run.workdir} stores no margins (a run of store format 1): re-run '
        'the estimate with this version, in a new --workdir')
  keep = ((preds['model_ids'] < int(run.config['num_models'])) &
          diagnostics.converged(preds['loss']))
  if not keep.all():
    preds = {k: v[keep] for k, v in preds.items()}
  if len(preds['model_ids']) != int(est['num_models']):
    raise store.StoreError(
        f'{run.workdir}/chunks holds {len(preds["model_ids"])} converged '
        f'models but estimates.npz was made from {int(est["num_models"])}: '
        'rerun the estimate there so the two agree')
  return preds


def run_pool(run: runs.Run) -> Pool:
  """The run's converged models as the attacks read them: masks, their
  margins on the training examples (t, n, V) float16, their ids."""
  preds = converged_predictions(run)
  return Pool(preds['masks'], preds['train_margin'], preds['model_ids'])
