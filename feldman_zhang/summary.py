"""The end-of-run summary: model accuracy, memorized examples, top pairs."""

import numpy as np

from feldman_zhang import diagnostics
from feldman_zhang import pairs as pairs_lib

_SHADES = ' .:-=+*#%@'


def summarize(config, ds, preds, valid, est) -> dict:
  """A JSON-able dict of the run's headline numbers."""
  test_acc = preds['test_correct'][valid].mean(1)
  mem = est['mem']
  threshold = config.summary.mem_threshold
  order = np.argsort(-mem, kind='stable')
  out = dict(
      data=ds.name, num_train=ds.num_train, num_test=ds.num_test,
      num_models=int(len(valid)), diverged_models=int((~valid).sum()),
      model_test_acc_mean=float(test_acc.mean()),
      model_test_acc_sd=float(test_acc.std()),
      mem_threshold=threshold,
      num_memorized=int((mem >= threshold).sum()),
      median_mem_stderr=float(np.median(est['mem_stderr'])),
      # Judged on the examples that can be memorized (diagnostics.memorizable).
      median_mem_stderr_memorizable=diagnostics.median_stderr(est),
      num_memorizable=int(diagnostics.memorizable(est['heldout_acc']).sum()),
      # mem_i <= in_acc_i: a recipe that under-fits its own subset caps mem.
      model_in_acc_mean=float(np.mean(est['in_acc'])),
      top_memorized=[dict(train=int(i), label=int(ds.y_train[i]),
                          mem=float(mem[i]),
                          heldout_acc=float(est['heldout_acc'][i]))
                     for i in order[:config.summary.top_pairs]])
  if ds.corrupted is not None and ds.corrupted.any():
    bad = ds.corrupted
    out['label_noise'] = dict(
        num_corrupted=int(bad.sum()),
        mem_median_corrupted=float(np.median(mem[bad])),
        mem_median_clean=float(np.median(mem[~bad])),
        memorized_corrupted=int((mem[bad] >= threshold).sum()),
        memorized_clean=int((mem[~bad] >= threshold).sum()))
  if 'cscore' in est:
    score = est['cscore']
    lowest = np.argsort(np.where(np.isnan(score), np.inf, score),
                        kind='stable')[:config.summary.top_pairs]
    out['cscore'] = dict(
        subset_ratios=[float(r) for r in est['subset_ratios']],
        mean=float(np.nanmean(score)) if np.isfinite(score).any() else None,
        lowest=[dict(train=int(i), label=int(ds.y_train[i]),
                     cscore=float(score[i]), mem=float(mem[i]))
                for i in lowest if np.isfinite(score[i])])
  out['caveats'] = caveats(out)
  p = config.summary.top_pairs
  if 'infl' in est:
    pairs = [(i, j, est['infl'][i, j]) for i, j in pairs_lib.top_pairs(est['infl'], p)]
  elif 'infl_top_infl' in est:
    pairs = pairs_lib.top_pairs_of_topk(
        est['infl_top_infl'], est['infl_top_train'], p,
        tuple(est[f'infl_pair_{k}'] for k in ('train', 'test', 'infl'))
        if 'infl_pair_train' in est else None)
  else:
    pairs = []
  if pairs:
    out['top_pairs'] = [
        dict(train=i, test=j, train_label=int(ds.y_train[i]),
             test_label=int(ds.y_test[j]), infl=float(v), mem=float(mem[i]))
        for i, j, v in pairs]
  return out


def caveats(s: dict) -> list[str]:
  """What a reader of a summary's numbers (and of the pairs and examples
  it lists) must know first, as sentences: made from the summary's own
  fields, so a summary.json written before it carried them gets them too."""
  out = []
  stderr = s.get('median_mem_stderr_memorizable')
  if stderr is not None and stderr > 0.1:
    out.append(f'with {s["num_models"]} models these estimates are mostly '
               f'noise (median mem stderr {stderr:.2f} over the '
               f'{s["num_memorizable"]} examples of held-out accuracy in '
               '[0.1, 0.9]); the paper trains thousands')
  return out


def ascii_image(x):
  """(H, W, C) uint8 -> lines of characters, darkest ink as '@'."""
  g = x.mean(-1) if x.ndim == 3 else x
  levels = (g.astype(np.float32) / 256 * len(_SHADES)).astype(int)
  return [''.join(_SHADES[v] * 2 for v in row) for row in levels]


def _fmt(x, digits=3):
  return 'n/a' if x is None else f'{x:.{digits}f}'


def render(s, ds, est) -> str:
  lines = [
      f'{s["num_models"]} models on {s["data"]} (n={s["num_train"]}, '
      f'n_test={s["num_test"]}), {s["diverged_models"]} diverged',
      f'model test accuracy: {s["model_test_acc_mean"]:.4f} '
      f'(sd {s["model_test_acc_sd"]:.4f} across models); accuracy on their '
      f'own subsets: {s["model_in_acc_mean"]:.4f}',
      f'examples with mem >= {s["mem_threshold"]}: {s["num_memorized"]} of '
      f'{s["num_train"]} (median mem stderr {s["median_mem_stderr"]:.3f})',
      'most memorized training examples:']
  if 'label_noise' in s:
    ln = s['label_noise']
    lines.insert(3, f'label noise: {ln["num_corrupted"]} corrupted labels, '
                 f'median mem {ln["mem_median_corrupted"]:.3f} (corrupted) vs '
                 f'{ln["mem_median_clean"]:.3f} (clean); mem >= '
                 f'{s["mem_threshold"]}: {ln["memorized_corrupted"]} corrupted, '
                 f'{ln["memorized_clean"]} clean')
  for r in s['top_memorized']:
    lines.append(f'  train {r["train"]:>6} label {r["label"]}: mem '
                 f'{r["mem"]:.3f}, held-out accuracy {r["heldout_acc"]:.3f}')
  # Small images are worth seeing: the memorized ones are the odd ones.
  if ds.x_train.shape[1] <= 16 and ds.x_train.shape[2] <= 16:
    pics = [ascii_image(ds.x_train[r['train']]) for r in s['top_memorized']]
    width = len(pics[0][0]) if pics else 0
    lines.append('  ' + ' | '.join(f'label {r["label"]}'.ljust(width)
                                   for r in s['top_memorized']))
    for row in zip(*pics):
      lines.append('  ' + ' | '.join(row))
  if 'top_pairs' in s:
    lines.append('strongest train -> test influence pairs:')
    for p in s['top_pairs']:
      se = (f' +- {est["infl_stderr"][p["train"], p["test"]]:.3f}'
            if 'infl_stderr' in est else '')
      lines.append(
          f'  train {p["train"]:>6} (label {p["train_label"]}) -> test '
          f'{p["test"]:>6} (label {p["test_label"]}): infl {p["infl"]:.3f}'
          f'{se}, mem {p["mem"]:.3f}')
  if 'cscore' in s:
    c = s['cscore']
    lines.append(f'C-scores (mean held-out accuracy over subset ratios '
                 f'{", ".join(f"{r:g}" for r in c["subset_ratios"])}): mean '
                 f'{_fmt(c["mean"])}; lowest:')
    for r in c['lowest']:
      lines.append(f'  train {r["train"]:>6} label {r["label"]}: C-score '
                   f'{r["cscore"]:.3f}, mem {r["mem"]:.3f}')
  if len(s.get('convergence') or []) > 1:  # t = 1 has nothing to compare
    parts = [f'{c["models"]} models: mean |change| {c["mean_abs_diff"]:.4f}, '
             f'corr {_fmt(c["correlation"])}' for c in s['convergence'][:-1]]
    lines.append('convergence of mem against all models: ' + '; '.join(parts))
  lines += [f'note: {c}' for c in s.get('caveats', caveats(s))]
  if s.get('stopped_at_target_stderr'):
    lines.append(f'stopped early: median mem stderr reached the target with '
                 f'{s["num_models"]} models')
  return '\n'.join(lines)
