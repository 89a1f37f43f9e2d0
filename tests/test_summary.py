"""The end-of-run summary, on predictions whose numbers are known."""

import numpy as np

from feldman_zhang import config as config_lib
from feldman_zhang import data
from feldman_zhang import diagnostics
from feldman_zhang import estimate
from feldman_zhang import summary

import reference


def _case(t=6, n=8, n_test=5, seed=0):
  rng = np.random.default_rng(seed)
  masks = rng.random((t, n)) < 0.6
  train_correct = rng.random((t, n)) < 0.7
  test_correct = rng.random((t, n_test)) < 0.7
  loss = rng.random((t, 2)).astype(np.float32)
  loss[1, -1] = np.nan  # one diverged model
  return dict(masks=masks, train_correct=train_correct,
              test_correct=test_correct, loss=loss)


def test_the_summary_counts_what_the_estimates_say():
  preds = _case()
  valid = diagnostics.converged(preds['loss'])
  est = estimate.estimate(preds['masks'][valid], preds['train_correct'][valid],
                          preds['test_correct'][valid])
  ref = reference.estimates(preds['masks'][valid],
                           preds['train_correct'][valid],
                           preds['test_correct'][valid])
  np.testing.assert_allclose(est['mem'], ref['mem'], atol=1e-6)
  ds = data.load('digits')
  c = config_lib.base()
  c.summary.update(mem_threshold=0.25, top_pairs=3)
  n = preds['masks'].shape[1]
  ds_small = ds.__class__(ds.name, ds.x_train[:n], ds.y_train[:n],
                          ds.x_test[:5], ds.y_test[:5], ds.num_classes)
  s = summary.summarize(c, ds_small, preds, valid, est)
  assert s['num_models'] == 6 and s['diverged_models'] == 1
  want_acc = preds['test_correct'][valid].mean(1)
  assert s['model_test_acc_mean'] == float(want_acc.mean())
  assert s['num_memorized'] == int((est['mem'] >= 0.25).sum())
  top = [r['train'] for r in s['top_memorized']]
  assert top == list(np.argsort(-est['mem'], kind='stable')[:3])
  # The strongest pairs are the largest entries of infl, strongest first.
  got = [(p['train'], p['test']) for p in s['top_pairs']]
  flat = np.argsort(-est['infl'], axis=None, kind='stable')[:3]
  assert [p['infl'] for p in s['top_pairs']] == sorted(
      (float(v) for v in est['infl'].reshape(-1)[flat]), reverse=True)
  assert len(got) == 3
  text = summary.render(dict(s, convergence=None), ds_small, est)
  assert f'{s["num_models"]} models on digits' in text
  assert f'{s["num_memorized"]} of {n}' in text
  assert 'mostly noise' in text  # 5 models: the caveat is printed
  # and recorded, for summary.json and the report.
  assert len(s['caveats']) == 1 and 'mostly noise' in s['caveats'][0]
  assert f'note: {s["caveats"][0]}' in text


def test_a_summary_of_enough_models_has_no_caveat():
  s = dict(num_models=2000, median_mem_stderr_memorizable=0.02,
           num_memorizable=300)
  assert summary.caveats(s) == []
  assert summary.caveats(dict(s, median_mem_stderr_memorizable=0.3))
