"""The paper's two experiments on top of a finished estimate run.

drop:      for each threshold theta, retrain without the training examples of
           mem >= theta, and without as many random examples; memorized
           examples are needed if the first arm loses more test accuracy.
lastlayer: train a backbone on the full training set, freeze its features,
           and re-run the subset estimator training only a last layer; the
           representation, not the last layer, is where memorization happens.

Both write under WORKDIR/<experiment>/, resume after an interruption (each
finished threshold, the backbone checkpoint and the heads' chunks are kept)
and log their progress.
"""

import dataclasses
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from feldman_zhang import config as config_lib
from feldman_zhang import models
from feldman_zhang import pipeline
from feldman_zhang import resume
from feldman_zhang import store
from feldman_zhang import train

DROP_STREAM = 1       # model-key streams (train.model_keys): never the
BACKBONE_STREAM = 2   # estimate's own models.


def _need_estimates(workdir):
  if not os.path.exists(store.estimates_path(workdir)):
    raise store.StoreError(f'{workdir} has no estimates.npz: run the estimate '
                           '(--mode=estimate) there first')


def _finished_run(config, workdir):
  """(dataset, m, estimates) of the estimate run in workdir."""
  if jax.process_count() > 1:
    # Both experiments train on one host's devices and write shared files.
    raise config_lib.ConfigError('the drop and lastlayer experiments run in '
                                 'one process: start them without '
                                 '--distributed')
  ds, m = pipeline.prepare(config)
  _need_estimates(workdir)
  resume.check_identity(workdir, resume.identity(config, ds))
  return ds, m, store.load_estimates(workdir)


# -- drop ---------------------------------------------------------------------


def random_removal(seed: int, theta_index: int, model: int, n: int, r: int):
  """(r,) sorted indices removed for one random-arm model."""
  rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
      [seed, theta_index, model, 0xD809])))
  return np.sort(rng.choice(n, r, replace=False))


def drop_one(config, ds, model, removed, theta, theta_index) -> dict:
  """Both arms at one threshold: arrays for drop/theta_*.npz.

  removed: (r,) the training examples of mem >= theta.
  """
  n, num = ds.num_train, config.drop.num_models
  r = len(removed)
  if r >= n:
    raise store.StoreError(f'mem >= {theta} removes every training example')
  random_removed = np.stack([random_removal(config.drop.seed, theta_index, j,
                                            n, r) for j in range(num)])
  keep = lambda gone: np.setdiff1d(np.arange(n), gone).astype(np.int32)
  idx = np.stack([keep(removed)] * num + [keep(g) for g in random_removed])
  keys = train.model_keys(config.seed, theta_index * 2**20 + np.arange(2 * num),
                          stream=DROP_STREAM)
  out = pipeline.train_models(config, model, ds, idx, keys)
  # A diverged model's accuracy is not the recipe's: NaN, left out of the
  # means, as the estimate leaves it out.
  acc = np.where(np.isfinite(out['loss']).all(1), out['test_correct'].mean(1),
                 np.nan)
  return dict(theta=np.float64(theta), drop_seed=np.int64(config.drop.seed),
              removed=removed,
              random_removed=random_removed.reshape(num, r),
              test_correct=out['test_correct'], loss=out['loss'],
              acc_high=acc[:num], acc_random=acc[num:])


def _mean_se(a):
  a = a[np.isfinite(a)]
  se = a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else float('nan')
  return float(a.mean()), float(se)


def drop(config, workdir) -> list:
  """The drop experiment; returns the table rows (also drop/drop.csv)."""
  _need_estimates(workdir)
  with store.locked(workdir):
    return _drop(config, workdir)


def _drop(config, workdir) -> list:
  ds, _, est = _finished_run(config, workdir)
  model = pipeline.create_model(config, ds)
  out_dir = os.path.join(workdir, 'drop')
  rows, start = [], time.time()
  thresholds = list(config.drop.thresholds)
  for i, theta in enumerate(thresholds):
    path = os.path.join(out_dir, f'theta_{theta:.4f}.npz')
    removed = np.flatnonzero(est['mem'] >= theta)
    result = _read_npz(path)
    if result is not None and not _same_drop(result, removed, config):
      logging.info('%s was made with other drop settings or estimates; '
                   'training it again', path)
      result = None
    if result is None:
      result = drop_one(config, ds, model, removed, theta, i)
      store.atomic_write(path, lambda f, r=result: np.savez(f, **r))
    high, high_se = _mean_se(result['acc_high'])
    rand, rand_se = _mean_se(result['acc_random'])
    rows.append(dict(theta=float(theta), num_removed=len(result['removed']),
                     fraction_removed=len(result['removed']) / ds.num_train,
                     acc_high_mem_removed=high, acc_high_mem_removed_se=high_se,
                     acc_random_removed=rand, acc_random_removed_se=rand_se))
    logging.info('drop %d/%d: mem >= %.2f removes %d; test acc %.4f +- %.4f '
                 'vs random %.4f +- %.4f (%.0fs)', i + 1, len(thresholds),
                 theta, rows[-1]['num_removed'], high, high_se, rand, rand_se,
                 time.time() - start)
  _write_csv(os.path.join(out_dir, 'drop.csv'), rows)
  _plot_drop(os.path.join(out_dir, 'drop.png'), rows, ds.name)
  print(_drop_table(rows))
  return rows


def _same_drop(result, removed, config) -> bool:
  """Whether a stored threshold's result is the one these settings make."""
  return ('drop_seed' in result and
          int(result['drop_seed']) == config.drop.seed and
          len(result['acc_high']) == config.drop.num_models and
          np.array_equal(result['removed'], removed))


def _read_npz(path):
  if not os.path.exists(path):
    return None
  try:
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('%s is unreadable (%s); recomputing it', path, e)
    return None


def _write_csv(path, rows):
  lines = [','.join(rows[0])]
  lines += [','.join(f'{v:.6g}' if isinstance(v, float) else str(v)
                     for v in r.values()) for r in rows]
  store.atomic_write(path, lambda f: f.write(('\n'.join(lines) + '\n').encode()))


def _drop_table(rows):
  out = ['mean test accuracy +- its standard error over the models',
         'theta  removed  fraction  acc(high mem removed)  acc(random removed)']
  for r in rows:
    out.append(f'{r["theta"]:5.2f}  {r["num_removed"]:7d}  '
               f'{r["fraction_removed"]:8.4f}  '
               f'{r["acc_high_mem_removed"]:.4f} +- '
               f'{r["acc_high_mem_removed_se"]:.4f}      '
               f'{r["acc_random_removed"]:.4f} +- '
               f'{r["acc_random_removed_se"]:.4f}')
  return '\n'.join(out)


def _plot_drop(path, rows, name):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  frac = [r['fraction_removed'] for r in rows]
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for key, label in (('acc_high_mem_removed', 'highest mem removed'),
                     ('acc_random_removed', 'random removed')):
    ax.errorbar(frac, [r[key] for r in rows],
                yerr=[r[key + '_se'] for r in rows], marker='o', capsize=3,
                label=label)
  ax.set_xlabel('fraction of training set removed')
  ax.set_ylabel('test accuracy')
  ax.set_title(f'{name}: removing memorized examples')
  ax.legend()
  fig.tight_layout()
  store.atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=120))
  plt.close(fig)


# -- last layer ---------------------------------------------------------------


def backbone(config, ds, workdir):
  """(params, state) of one model trained on the whole training set, saved
  with orbax under workdir/lastlayer/backbone and restored on a rerun."""
  path = os.path.abspath(os.path.join(workdir, 'lastlayer', 'backbone'))
  model = pipeline.create_model(config, ds)
  params, state = train.init(model, jax.random.key(0), ds.x_train)
  target = {'params': params, **state}
  checkpointer = ocp.StandardCheckpointer()
  restored = None
  if os.path.exists(path):
    try:
      restored = checkpointer.restore(path, target)
      logging.info('restored the backbone from %s', path)
    except Exception as e:  # pylint: disable=broad-except
      # Orbax and TensorStore raise many types for a damaged checkpoint; the
      # backbone is deterministic, so training it again gives it back.
      logging.warning('the backbone checkpoint %s is unreadable (%s); '
                      'training it again', path, str(e).splitlines()[0])
      (shutil.rmtree if os.path.isdir(path) else os.remove)(path)
  if restored is None:
    logging.info('training the backbone on all %d examples', ds.num_train)
    train_one = jax.jit(train.make_trainer(model, config, ds.num_train))
    key = train.model_keys(config.seed, [0], stream=BACKBONE_STREAM)[0]
    (params, state), losses = train_one(
        key, np.arange(ds.num_train, dtype=np.int32), ds.x_train, ds.y_train)
    if not np.isfinite(np.asarray(losses)).all():
      raise store.StoreError('the backbone diverged; lower train.lr')
    restored = {'params': params, **state}
    checkpointer.save(path, restored)
    checkpointer.wait_until_finished()
  params = restored.pop('params')
  return model, params, restored


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
  without its warm-up, which was sized in the network's epochs; the same
  seed and subsets."""
  head_config = config.copy_and_resolve_references()
  with head_config.unlocked():
    head_config.models_per_device = config.lastlayer.models_per_device
    head_config.train.update(epochs=config.lastlayer.epochs,
                             batch_size=config.lastlayer.batch_size,
                             lr=config.lastlayer.lr, augment='none',
                             compute_dtype='float32', momentum_dtype='float32',
                             param_storage='float32', weight_decay=0.0,
                             warmup_epochs=0.0)
    head_config.model.name = 'linear'
  config_lib.validate(head_config)
  return head_config


def lastlayer(config, workdir) -> dict:
  """The last-layer experiment; returns the comparison (also JSON, PNG)."""
  _need_estimates(workdir)
  with store.locked(workdir):
    return _lastlayer(config, workdir)


def _lastlayer(config, workdir) -> dict:
  ds, m, est = _finished_run(config, workdir)
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
  out_dir = os.path.join(workdir, 'lastlayer')
  model, params, state = backbone(config, ds, workdir)
  feats = dataclasses.replace(
      ds, name=f'{ds.name} (frozen features)',
      x_train=features(model, params, state, ds.x_train),
      x_test=features(model, params, state, ds.x_test))
  head_config = make_head_config(config)
  # The same seed, n and m: every head trains on its full model's subset.
  try:
    summary = pipeline.run_on(head_config, out_dir, feats, m,
                              models.Linear(ds.num_classes), show=False)
  except resume.IdentityError as e:
    raise store.StoreError(
        f'{out_dir} holds heads made with other settings ('
        f'{", ".join(e.diffs)} differ: lastlayer.* changed, or an older '
        f'version made them); remove {out_dir} to train them again (the '
        'estimate run is kept)') from e
  head = store.load_estimates(out_dir)
  comparison = compare_mem(est['mem'], head['mem'],
                           config.summary.mem_threshold)
  full_summary = os.path.join(workdir, 'summary.json')
  full_acc = (store.read_json(full_summary).get('model_test_acc_mean')
              if os.path.exists(full_summary) else None)
  comparison.update(head_test_acc_mean=summary['model_test_acc_mean'],
                    full_test_acc_mean=full_acc,
                    num_models_full=int(est['num_models']),
                    num_models_last=int(head['num_models']))
  store.write_json(os.path.join(out_dir, 'comparison.json'), comparison)
  _plot_histograms(os.path.join(out_dir, 'mem_histograms.png'), est['mem'],
                   head['mem'], ds.name)
  print(f'memorization, full network vs last layer alone ({ds.name}):\n'
        f'  examples with mem >= {comparison["threshold"]}: '
        f'{comparison["memorized_full"]} full, {comparison["memorized_last"]} '
        f'last layer\n  median mem {comparison["median_full"]:.3f} vs '
        f'{comparison["median_last"]:.3f}; correlation of the two mem '
        f'estimates {comparison["correlation"]:.3f}\n  mean test accuracy: '
        f'heads {comparison["head_test_acc_mean"]:.4f}, full networks '
        + ('unknown' if full_acc is None else f'{full_acc:.4f}'))
  return comparison


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


def _plot_histograms(path, full, last, name):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5, 3.5))
  # mem lies in [-1, 1] but is rarely much below 0: the axis starts where
  # the data does, so the right half is not squeezed against an empty left.
  lo = min(-0.05, np.floor(20 * min(np.min(full), np.min(last))) / 20)
  bins = np.linspace(lo, 1, 41)
  ax.hist(full, bins, alpha=0.6, label='full network')
  ax.hist(last, bins, alpha=0.6, label='last layer only')
  ax.set_yscale('log')
  ax.set_xlabel('memorization estimate')
  ax.set_ylabel('training examples')
  ax.set_title(name)
  ax.legend()
  fig.tight_layout()
  store.atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=120))
  plt.close(fig)

