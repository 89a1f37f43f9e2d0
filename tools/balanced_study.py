"""Random against balanced subsets at equal t: the figures in BENCHMARKS.md.

  python tools/balanced_study.py OUT_DIR

On the tests' planted data (tests/planted.py, 96 models) and the default
digits job (1,000 models): the median mem standard error (all examples, and
the memorizable ones, diagnostics.median_stderr), the spread of the per-example
model counts |A_i|, and on the planted data how many of its 12 planted
(train, test) pairs are the 12 strongest pairs. Not a test: minutes on 2
cores.
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import planted  # pylint: disable=g-import-not-at-top,wrong-import-position
from feldman_zhang import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from feldman_zhang import diagnostics  # pylint: disable=g-import-not-at-top,wrong-import-position
from feldman_zhang import estimates_file  # pylint: disable=g-import-not-at-top,wrong-import-position
from feldman_zhang import pairs  # pylint: disable=g-import-not-at-top,wrong-import-position
from feldman_zhang import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def figures(workdir, plants=None) -> dict:
  est = estimates_file.load_estimates(workdir)
  out = dict(models=int(est['num_models']),
             median_mem_stderr=float(np.median(est['mem_stderr'])),
             median_mem_stderr_memorizable=diagnostics.median_stderr(est),
             num_in_min=int(est['num_in'].min()),
             num_in_max=int(est['num_in'].max()))
  if plants is not None:
    train_ids, test_ids = plants
    top = pairs.top_pairs(est['infl'], len(train_ids))
    out['planted_pairs_in_top'] = len(set(top) & set(zip(
        train_ids.tolist(), test_ids.tolist())))
    out['planted_mem_mean'] = float(est['mem'][train_ids].mean())
  return out


def main(out):
  os.makedirs(out, exist_ok=True)
  plants = planted.make(os.path.join(out, 'planted.npz'))
  digits = config_lib.from_file(os.path.join(ROOT, 'configs', 'digits_mlp.py'))
  result = {}
  for design in ('random', 'balanced'):
    c = planted.config(os.path.join(out, 'planted.npz'))
    c.subset_design = design
    pipeline.run(c, os.path.join(out, f'planted_{design}'))
    result[f'planted_{design}'] = figures(
        os.path.join(out, f'planted_{design}'), plants)
    c = config_lib.copy(digits)
    c.subset_design = design
    pipeline.run(c, os.path.join(out, f'digits_{design}'))
    result[f'digits_{design}'] = figures(os.path.join(out, f'digits_{design}'))
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  main(sys.argv[1])
