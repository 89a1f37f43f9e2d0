r"""Compares the stored predictions and estimates of two runs.

  python -m feldman_zhang.analysis.compare_runs --a=runs/k100 --b=runs/k25

Reports how many correctness entries differ (models trained with another
models-per-device K may reorder float sums) and the largest estimate change.
"""


from absl import app
from absl import flags
import numpy as np

from feldman_zhang import chunks
from feldman_zhang import estimates_file
from feldman_zhang import identity as identity_lib
from feldman_zhang.analysis import commands
from feldman_zhang.analysis import runs



def settings_differ(a: str, b: str) -> list:
  """The recorded settings (run.json) in which runs a and b differ, as
  'field (a: X, b: Y)' (identity_lib.differences); models_per_device and other
  scheduling fields are not recorded, since they do not change what a run
  computes."""
  diffs = identity_lib.differences(identity_lib.read_identity(a), identity_lib.read_identity(b))
  name = lambda k: (k[len('config.'):] if k.startswith('config.') else
                    f'identity.{k}')
  return [f'{name(k)} (a: {va!r}, b: {vb!r})' for k, (va, vb) in diffs.items()]


def compare(a: str, b: str) -> dict:
  """StoreError in one line if either run is unfinished or damaged."""
  runs.check_finished(a)
  runs.check_finished(b)
  pa, pb = chunks.load_predictions(a), chunks.load_predictions(b)
  t = min(len(pa['model_ids']), len(pb['model_ids']))
  # Runs of other settings differ by design, not by reproducibility.
  out = dict(settings_differ=settings_differ(a, b) or 'none', models=t)
  for k in ('masks', 'train_correct', 'test_correct'):
    diff = pa[k][:t] != pb[k][:t]
    out[f'{k}_differ'] = int(diff.sum())
    out[f'{k}_entries'] = int(diff.size)
  ea, eb = estimates_file.load_estimates(a), estimates_file.load_estimates(b)
  if int(ea['num_models']) != int(eb['num_models']):
    # Estimates of other t differ by sampling, not by reproducibility.
    out['estimates'] = (f'not compared: {int(ea["num_models"])} and '
                        f'{int(eb["num_models"])} models')
    return out
  for k in ('mem', 'infl'):
    if k in ea and k in eb:
      out[f'{k}_max_abs_diff'] = float(np.abs(ea[k] - eb[k]).max())
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  for k, v in compare(flags.FLAGS.a, flags.FLAGS.b).items():
    print(f'{k}: {v}')


def define_flags():
  flags.DEFINE_string('a', None, 'First workdir.', required=True)
  flags.DEFINE_string('b', None, 'Second workdir.', required=True)


def run():
  """The command (python -m feldman_zhang.analysis.compare_runs)."""
  commands.run(define_flags, main)


if __name__ == '__main__':
  run()
