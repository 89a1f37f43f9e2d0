"""The drop experiment: retrain without the examples of highest mem, and
without as many random ones (Feldman & Zhang's marginal utility).

Numbers only: WORKDIR/drop/theta_*.npz (each threshold's models) and
drop.csv; analysis.experiment_figures draws them.
"""

import concurrent.futures
import csv
import os
import time

import numpy as np
from absl import logging

from feldman_zhang import errors
from feldman_zhang import optimizer
from feldman_zhang import runner
from feldman_zhang import store
from feldman_zhang import streams
from feldman_zhang import train
from feldman_zhang.experiments import common


def train_rows(config, model, ds, idx, keys, ahead=None) -> dict:
  """The outputs of one model per row of idx (R, m), keys (R,), trained by
  the job's runner on this host's devices. ahead: (program, its compile
  under way) from compile_ahead, or None to build and compile here."""
  if ahead is None:
    ahead = _program(config, model, ds, idx.shape[1], len(idx)), None
  program, compiling = ahead
  return runner.train_rows(program, keys, idx, compiling=compiling)


def _program(config, model, ds, m: int, rows: int, data=None):
  return runner.Program(model, config, ds, m,
                        min(config.models_per_device, rows), data=data)


def compile_ahead(config, model, ds, sizes) -> dict:
  """{m: (program, its compile under way)} for the subset sizes m, in the
  order given (the order they train in).

  A threshold removes r examples and trains on m = n - r: m fixes the
  program's shapes (the epoch permutation, the steps per epoch), so the
  thresholds cannot share one program. Instead each compiles in the
  background while the ones before it train, on a queue of a quarter of
  the host's cores (XLA compiles without the GIL; one on a 2-core host, so
  a compile never waits for more than the training it overlaps). The
  programs share one copy of the data on the devices.
  """
  pool = concurrent.futures.ThreadPoolExecutor(
      max(1, (os.cpu_count() or 1) // 4))
  ahead, data = {}, None
  for m in dict.fromkeys(sizes):
    program = _program(config, model, ds, m, 2 * config.drop.num_models, data)
    data = program.data
    ahead[m] = program, program.compile_async(pool)
  pool.shutdown(wait=False)
  return ahead


def random_removal(seed: int, theta_index: int, model: int, n: int, r: int):
  """(r,) sorted indices removed for one random-arm model."""
  rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
      [seed, theta_index, model, streams.DROP_RANDOM])))
  return np.sort(rng.choice(n, r, replace=False))


def check_removal(config, n: int, r: int, theta) -> None:
  """ConfigError/StoreError in one line if removing r of the n examples
  leaves nothing to train."""
  if r >= n:
    raise store.StoreError(f'mem >= {theta} removes every training example')
  if optimizer.step_counts(n - r, config.train)[1] < 1:
    raise errors.ConfigError(
        f'mem >= {theta} leaves {n - r} training examples, on which '
        f'train.epochs={config.train.epochs:g} at train.batch_size='
        f'{config.train.batch_size} (drop_last={config.train.drop_last}) '
        'trains no step; lower the batch size or leave that threshold out '
        'of drop.thresholds')


def drop_one(config, ds, model, removed, theta, theta_index,
             ahead=None) -> dict:
  """Both arms at one threshold: arrays for drop/theta_*.npz.

  removed: (r,) the training examples of mem >= theta. ahead: as in
  train_rows.
  """
  n, num = ds.num_train, config.drop.num_models
  r = len(removed)
  check_removal(config, n, r, theta)
  random_removed = np.stack([random_removal(config.drop.seed, theta_index, j,
                                            n, r) for j in range(num)])
  keep = lambda gone: np.setdiff1d(np.arange(n), gone).astype(np.int32)
  idx = np.stack([keep(removed)] * num + [keep(g) for g in random_removed])
  keys = train.model_keys(config.seed, theta_index * 2**20 + np.arange(2 * num),
                          stream=streams.DROP)
  out = train_rows(config, model, ds, idx, keys, ahead)
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
  common.need_estimates(workdir)
  with store.locked(workdir):
    job, est = common.finished_run(config, workdir)
    return _drop(job.config, job.ds, job.model, est, workdir)


def _drop(config, ds, model, est, workdir) -> list:
  w = store.Workdir(workdir)
  rows, start = [], time.time()
  thresholds = list(config.drop.thresholds)
  removed = [np.flatnonzero(est['mem'] >= theta) for theta in thresholds]
  stored = [_stored(w.drop_theta(theta), gone, config)
            for theta, gone in zip(thresholds, removed)]
  todo = [i for i, result in enumerate(stored) if result is None]
  n = ds.num_train
  for i in todo:
    check_removal(config, n, len(removed[i]), thresholds[i])
  ahead = compile_ahead(config, model, ds, [n - len(removed[i]) for i in todo])
  for i, theta in enumerate(thresholds):
    result = stored[i]
    if result is None:
      result = drop_one(config, ds, model, removed[i], theta, i,
                        ahead[n - len(removed[i])])
      store.atomic_write(w.drop_theta(theta),
                         lambda f, r=result: np.savez(f, **r))
    high, high_se = _mean_se(result['acc_high'])
    rand, rand_se = _mean_se(result['acc_random'])
    rows.append(dict(theta=float(theta), num_removed=len(result['removed']),
                     fraction_removed=len(result['removed']) / ds.num_train,
                     acc_high_mem_removed=high, acc_high_mem_removed_se=high_se,
                     acc_random_removed=rand, acc_random_removed_se=rand_se,
                     models_per_arm=len(result['acc_high'])))
    logging.info('drop %d/%d: mem >= %.2f removes %d; test acc %.4f +- %.4f '
                 'vs random %.4f +- %.4f (%.0fs)', i + 1, len(thresholds),
                 theta, rows[-1]['num_removed'], high, high_se, rand, rand_se,
                 time.time() - start)
  _write_csv(w.drop_csv, rows)
  print(_drop_table(rows))
  return rows


def _stored(path, removed, config) -> dict | None:
  """The threshold's stored result if these settings made it, else None."""
  result = _read_npz(path)
  if result is not None and not _same_drop(result, removed, config):
    logging.info('%s was made with other drop settings or estimates; '
                 'training it again', path)
    return None
  return result


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


def read_table(workdir) -> list[dict] | None:
  """drop/drop.csv's rows (floats and ints), or None if there is none;
  StoreError in one line if it is damaged."""
  path = store.Workdir(workdir).drop_csv
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding='ascii') as f:
      rows = list(csv.DictReader(f))
    num = lambda v: int(v) if v.lstrip('-').isdigit() else float(v)
    rows = [{k: num(v) for k, v in r.items()} for r in rows]
    if not rows or set(rows[0]) not in (set(COLUMNS), set(COLUMNS[:-1])):
      raise ValueError(f'columns {list(rows[0]) if rows else []}, not '
                       f'{list(COLUMNS)}')
  except (OSError, UnicodeDecodeError, ValueError, TypeError,
          AttributeError) as e:
    raise store.StoreError(
        f'{path} is damaged ({type(e).__name__}: {str(e)[:120]}); '
        '--mode=drop on the same run rebuilds it') from e
  return rows


# drop.csv's columns, in order (tables written before models_per_arm, the
# models trained per arm, lack the last).
COLUMNS = ('theta', 'num_removed', 'fraction_removed', 'acc_high_mem_removed',
           'acc_high_mem_removed_se', 'acc_random_removed',
           'acc_random_removed_se', 'models_per_arm')


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
