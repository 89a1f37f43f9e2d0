"""The last-layer experiment: the estimate again, training only a linear
head on the frozen features of a backbone trained on the whole training set.

Numbers only: WORKDIR/lastlayer/ holds the backbone checkpoint, the heads'
run (chunks, estimates.npz) and comparison.json; analysis.
experiment_figures draws the histograms.
"""

import dataclasses
import glob
import hashlib
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from feldman_zhang import config as config_lib
from feldman_zhang import errors
from feldman_zhang import estimates_file
from feldman_zhang import models
from feldman_zhang import prepare as prepare_lib
from feldman_zhang import identity as identity_lib
from feldman_zhang import resolve
from feldman_zhang import store
from feldman_zhang import streams
from feldman_zhang import train
from feldman_zhang.experiments import common


def backbone(job, workdir):
  """(model, params, state) of job's model trained on the whole training
  set, saved with orbax under workdir/lastlayer/backbone and restored on a
  rerun.

  orbax reads back flipped bits in the weights' files as other weights: a
  sha256 of the weights (checksum) sits beside the checkpoint, and a
  checkpoint that fails it, or has none, is unreadable. Unreadable, it is
  trained again: the backbone is deterministic.
  """
  config, ds, model = job.config, job.ds, job.model
  w = store.Workdir(workdir)
  path = w.backbone
  params, state = models.init(model, jax.random.key(0), ds.x_train)
  target = {'params': params, **state}
  _remove_partial_saves(path)
  restored = None
  if os.path.exists(path):
    restored = _restore(path, w.backbone_checksum, target)
  if restored is None:
    logging.info('training the backbone on all %d examples', ds.num_train)
    train_one = jax.jit(train.make_trainer(model, config, ds.num_train))
    key = train.model_keys(config.seed, [0], stream=streams.BACKBONE)[0]
    (params, state), losses = train_one(
        key, np.arange(ds.num_train, dtype=np.int32), ds.x_train, ds.y_train)
    if not np.isfinite(np.asarray(losses)).all():
      raise errors.StoreError('the backbone diverged; lower train.lr')
    restored = {'params': params, **state}
    _save(path, w.backbone_checksum, restored)
  params = restored.pop('params')
  return model, params, restored


def checksum(tree) -> str:
  """sha256 of a pytree's leaves: each one's path, dtype, shape and bytes."""
  h = hashlib.sha256()
  for key, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f'{jax.tree_util.keystr(key)}{a.dtype.str}{a.shape}'.encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _restore(path, checksum_path, target):
  """The checkpoint at path if it is whole and passes its checksum; else
  None, with a warning naming it, and it is removed."""
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      restored = checkpointer.restore(path, target)
    want = store.read_json(checksum_path)['sha256']
  except FileNotFoundError:
    why = (f'has no checksum ({checksum_path}: cut off while it was saved, '
           'or saved by an older version)')
  except Exception as e:  # pylint: disable=broad-except
    # Orbax and TensorStore raise many types for a damaged checkpoint, json
    # and KeyError a damaged checksum file.
    why = f'is unreadable ({_short(e)})'
  else:
    if checksum(restored) == want:
      logging.info('restored the backbone from %s', path)
      return restored
    why = f'fails its checksum ({checksum_path})'
  logging.warning('the backbone checkpoint %s %s; training it again', path,
                  why)
  _remove(path)
  _remove(checksum_path)
  return None


def _save(path, checksum_path, tree):
  """Saves tree with orbax and its checksum beside it; a failed write (a
  full disk: orbax's RESOURCE_EXHAUSTED) is a StoreError in one line
  naming the path, with no partial checkpoint left behind."""
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(path, tree)
      checkpointer.wait_until_finished()
    store.write_json(checksum_path, dict(sha256=checksum(tree)))
  except Exception as e:  # pylint: disable=broad-except
    _remove_partial_saves(path)
    _remove(path)
    _remove(checksum_path)
    if not _is_storage_error(e):
      raise
    raise errors.StoreError(
        f'cannot save the backbone checkpoint {path}: {_short(e)}; free '
        'space (or make the workdir writable) and rerun the same command'
    ) from e


# TensorStore raises ValueError with the status first: these are the
# storage's failures (a full or read-only disk, a vanished folder).
_STORAGE_STATUS = ('RESOURCE_EXHAUSTED', 'PERMISSION_DENIED', 'NOT_FOUND',
                   'os_error_code')


def _is_storage_error(e) -> bool:
  return isinstance(e, OSError) or any(s in str(e) for s in _STORAGE_STATUS)


def _short(e) -> str:
  """An exception in a short line: TensorStore's messages run to pages
  (the whole spec of the store they failed on)."""
  if isinstance(e, OSError) and e.strerror:
    return e.strerror
  text = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
  for cut in (' [tensorstore_spec', ' [source locations'):
    text = text.split(cut)[0]
  match = re.search(r'"([^"]*)": (.*?)( \[os_error_code=\d+\])?$', text)
  if match and 'os_error_code' in text:
    return match.group(2)  # "...": No space left on device [os_error_code]
  return text[:200]


def _remove_partial_saves(path):
  """orbax writes into PATH.orbax-checkpoint-tmp-* (or a partial_save one)
  and renames: a kill or a failed write leaves that folder."""
  for tmp in glob.glob(f'{glob.escape(path)}.*orbax-checkpoint-tmp*'):
    _remove(tmp)


def _remove(path):
  if os.path.isdir(path):
    shutil.rmtree(path, ignore_errors=True)
  elif os.path.exists(path):
    os.remove(path)


def features(model, params, state, x, batch_size=1024):
  """(N, d) float32 features of the frozen backbone."""
  fn = jax.jit(lambda xb: model.apply({'params': params, **state}, xb,
                                      method='features').astype(jnp.float32))
  return np.concatenate([np.asarray(fn(x[i:i + batch_size]))
                         for i in range(0, len(x), batch_size)])


def make_head_config(config):
  """The estimate config of the last-layer heads: config.lastlayer's epochs,
  batch size and lr; f32 linear heads with f32 momentum on the features
  (whatever the full network's precision); the network's schedule shape
  without its warm-up, which was sized in the network's epochs; every
  example in every epoch (no dropped last batch); the same seed and
  subsets."""
  head_config = config_lib.copy(config)
  with head_config.unlocked():
    head_config.models_per_device = config.lastlayer.models_per_device
    head_config.train.update(epochs=config.lastlayer.epochs,
                             batch_size=config.lastlayer.batch_size,
                             lr=config.lastlayer.lr, augment='none',
                             compute_dtype='float32', momentum_dtype='float32',
                             param_storage='float32', weight_decay=0.0,
                             warmup_epochs=0.0, drop_last=False)
    head_config.model.name = 'linear'
    head_config.subset_ratios = ()  # heads at the estimate's ratio only
  resolve.validate(head_config)
  return head_config


def lastlayer(config, workdir, job) -> dict:
  """The last-layer experiment; returns the comparison (also
  lastlayer/comparison.json).

  job: the estimate job, pipeline.run_on, which trains the heads: they are
  an estimate run of their own, in WORKDIR/lastlayer.
  """
  common.need_estimates(workdir)
  with store.locked(workdir):
    parent, est = common.finished_run(config, workdir)
    return _lastlayer(parent, est, workdir, job)


def _lastlayer(parent, est, workdir, job) -> dict:
  config, ds, m = parent.config, parent.ds, parent.m
  # The estimate's models, its diverged ones too: the heads train on the
  # same subsets, whichever of those models diverged.
  if int(est['num_models']) + len(est.get('diverged_models', ())) != \
      config.num_models:
    # Same seed, so the first min(t, t') subsets are shared; the two mem
    # estimates still differ in t, and so in noise.
    logging.warning('lastlayer trains %d heads; the estimate it is compared '
                    'with has %d models: --config.num_models=%d matches it',
                    config.num_models, int(est['num_models']),
                    int(est['num_models']))
  out_dir = store.Workdir(workdir).lastlayer.root
  head_config = make_head_config(config)
  prepare_lib.check_steps(head_config.train, m, 'lastlayer')
  model, params, state = backbone(parent, workdir)
  feats = dataclasses.replace(
      ds, name=f'{ds.name} (frozen features)',
      x_train=features(model, params, state, ds.x_train),
      x_test=features(model, params, state, ds.x_test))
  # The same seed, n and m: every head trains on its full model's subset.
  try:
    summary = job(prepare_lib.derived(head_config, head_config, feats, m,
                                      models.Linear(ds.num_classes)),
                  out_dir, show=False)
  except identity_lib.IdentityError as e:
    raise errors.StoreError(
        f'{out_dir} holds heads made with other settings ('
        f'{", ".join(e.diffs)} differ: lastlayer.* changed, or an older '
        f'version made them); remove {out_dir} to train them again (the '
        'estimate run is kept)') from e
  head = estimates_file.load_estimates(out_dir)
  comparison = compare_mem(est['mem'], head['mem'],
                           config.summary.mem_threshold)
  full_summary = store.Workdir(workdir).summary_json
  full_acc = (store.read_json(full_summary).get('model_test_acc_mean')
              if os.path.exists(full_summary) else None)
  comparison.update(head_test_acc_mean=summary['model_test_acc_mean'],
                    full_test_acc_mean=full_acc,
                    num_models_full=int(est['num_models']),
                    num_models_last=int(head['num_models']))
  store.write_json(store.Workdir(workdir).comparison_json, comparison)
  print(f'memorization, full network vs last layer alone ({ds.name}):\n'
        f'  examples with mem >= {comparison["threshold"]}: '
        f'{comparison["memorized_full"]} full, {comparison["memorized_last"]} '
        f'last layer\n  median mem {comparison["median_full"]:.3f} vs '
        f'{comparison["median_last"]:.3f}; correlation of the two mem '
        f'estimates {comparison["correlation"]:.3f}\n  mean test accuracy: '
        f'heads {comparison["head_test_acc_mean"]:.4f}, full networks '
        + ('unknown' if full_acc is None else f'{full_acc:.4f}'))
  return comparison


def read_comparison(workdir) -> dict | None:
  """lastlayer/comparison.json, or None if there is none; StoreError in one
  line if it is damaged."""
  path = store.Workdir(workdir).comparison_json
  if not os.path.exists(path):
    return None
  try:
    comparison = store.read_json(path)
    if not isinstance(comparison, dict) or 'memorized_last' not in comparison:
      raise ValueError('not a comparison')
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise errors.StoreError(
        f'{path} is damaged ({type(e).__name__}: {str(e)[:120]}); '
        '--mode=lastlayer on the same run rebuilds it') from e
  return comparison


def read_head_mem(workdir):
  """(n,) the heads' mem, or None where they have no estimates; StoreError
  in one line if the estimates are damaged."""
  heads = store.Workdir(workdir).lastlayer
  if not os.path.exists(heads.estimates):
    return None
  try:
    # mem alone: the dense matrices' crc32 (a read of each) is not needed.
    return estimates_file.load_estimates(heads.root, verify=False)['mem']
  except (errors.StoreError, KeyError) as e:
    raise errors.StoreError(
        f'{heads.estimates} is damaged ({str(e)[:160]}); --mode=lastlayer '
        'on the same run rebuilds it') from e


def compare_mem(full, last, threshold) -> dict:
  corr = (float(np.corrcoef(full, last)[0, 1])
          if full.std() > 0 and last.std() > 0 else float('nan'))
  return dict(threshold=threshold,
              memorized_full=int((full >= threshold).sum()),
              memorized_last=int((last >= threshold).sum()),
              median_full=float(np.median(full)),
              median_last=float(np.median(last)),
              mean_full=float(full.mean()), mean_last=float(last.mean()),
              correlation=corr)
