r"""What storing the margins as float16 changes: LiRA's AUC and TPR and the
LDS of infl on the margin, from float32 margins and from the same margins
rounded to float16.

  python tools/margin_precision.py [CONFIG] [POOL] [EVAL]
  python tools/margin_precision.py configs/digits_mlp.py 512 128

Trains POOL models of CONFIG (the job's own program and subsets, seed 0)
and EVAL models on 50% subsets of another stream (the LDS's evaluation
models), keeps their margins in float32 as the device computed them, and
prints every figure both ways as JSON. A measurement for BENCHMARKS.md, not
a test.
"""

import json
import sys
import time

import numpy as np

from feldman_zhang import config as config_lib
from feldman_zhang import margins
from feldman_zhang import prepare as prepare_lib
from feldman_zhang import runner
from feldman_zhang import schedule
from feldman_zhang import subsets
from feldman_zhang.analysis import lds_score
from feldman_zhang.analysis import lira


def _train(job, ratio, stream, count):
  c = config_lib.copy(job.config)
  c.update(subset_ratio=ratio, subset_stream=stream, num_models=count)
  m = subsets.subset_size(job.ds.num_train, ratio)
  program = runner.Program(job.model, c, job.ds, m,
                           min(c.models_per_device, count))
  keys, idx = schedule.model_inputs(c, job.ds.num_train, m, np.arange(count))
  out = runner.train_rows(program, keys, idx)
  out['masks'] = subsets.to_masks(idx, job.ds.num_train)
  return out


def main(config_file='configs/digits_mlp.py', pool='512', evals='128'):
  job = prepare_lib.prepare(config_lib.from_file(config_file))
  begin = time.time()
  a = _train(job, job.config.subset_ratio, 0, int(pool))
  b = _train(job, 0.5, 5001, int(evals))
  trained_s = time.time() - begin
  result = dict(config=config_file, pool=int(pool), eval=int(evals),
                train_s=round(trained_s, 1))
  for name, cast in (('float32', np.float32), ('float16', np.float16)):
    phi = lambda x: x.astype(cast).astype(np.float32)
    attacks = lira.attack_all(a['masks'], phi(a['train_margin']),
                                    num_bootstrap=100)
    score = margins.infl_margin(a['masks'], phi(a['test_margin']))
    out = lds_score.lds(score, b['masks'], phi(b['test_margin']).mean(-1))
    result[name] = dict(
        lds_infl_margin=[out['value'], out['lo'], out['hi']],
        **{k: dict(auc=v['auc']['value'],
                   tpr_at_0001=v['tpr_at_fpr']['0.001']['value'])
           for k, v in attacks.items()})
  finite = np.isfinite(a['train_margin'])
  result['margin_range'] = [float(a['train_margin'][finite].min()),
                            float(a['train_margin'][finite].max())]
  result['float16_max_abs_error'] = float(np.max(np.abs(
      a['train_margin'] - a['train_margin'].astype(np.float16))))
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  main(*sys.argv[1:])
