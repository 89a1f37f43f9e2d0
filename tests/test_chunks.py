"""The per-model prediction chunks: what they keep, whose run they are,
old formats, and chunks that are not what their name says."""

import os
import shutil

import numpy as np
import pytest

from feldman_zhang import chunks
from feldman_zhang import errors
from feldman_zhang import estimates_file
from feldman_zhang import pipeline
from feldman_zhang import store


def _chunk_arrays(k=3, n=20, n_test=6, views=2, seed=0):
  rng = np.random.default_rng(seed)
  bits = lambda *s: rng.random(s) < 0.5
  floats = lambda *s: rng.standard_normal(s).astype(np.float32)
  return dict(model_ids=np.arange(4, 4 + k), masks=bits(k, n),
              train_correct=bits(k, n), test_correct=bits(k, n_test),
              train_ptrue=floats(k, n), test_ptrue=floats(k, n_test),
              loss=floats(k, 2), train_margin=10 * floats(k, n, views),
              test_margin=10 * floats(k, n_test, views))


def test_a_chunk_keeps_its_margins_and_the_run_that_wrote_it(tmp_path):
  workdir, arrays = str(tmp_path), _chunk_arrays()
  path = chunks.write_chunk(workdir, **arrays, run_id='run-a')
  got = chunks.read_chunk(path, dict(run_id='run-a', n=20, n_test=6))
  assert got['run_id'] == 'run-a'
  for k in ('train_margin', 'test_margin'):
    assert got[k].dtype == chunks.MARGIN_DTYPE and got[k].shape[-1] == 2
    np.testing.assert_array_equal(got[k], arrays[k].astype(np.float16))
  for k in ('masks', 'train_correct', 'test_correct'):
    np.testing.assert_array_equal(got[k], arrays[k])
  # A copy of a chunk keeps its run (the tests rewrite chunks so).
  again = chunks.write_chunk(str(tmp_path / 'b'), **got)
  assert chunks.read_chunk(again)['run_id'] == 'run-a'


@pytest.mark.parametrize('expect', [dict(run_id='run-b'), dict(n=21),
                                    dict(n_test=5)])
def test_a_chunk_of_another_run_is_foreign(tmp_path, expect):
  path = chunks.write_chunk(str(tmp_path), **_chunk_arrays(), run_id='run-a')
  with pytest.raises(chunks.ForeignChunkError, match='belongs to another run'):
    chunks.read_chunk(path, expect)


def test_stored_models_set_a_foreign_chunk_aside(tmp_path):
  workdir = str(tmp_path)
  mine = _chunk_arrays()
  chunks.write_chunk(workdir, **mine, run_id='run-a')
  theirs = dict(_chunk_arrays(seed=1), model_ids=np.arange(7, 10))
  chunks.write_chunk(workdir, **theirs, run_id='run-b')
  expect = dict(run_id='run-a', n=20, n_test=6)
  have = chunks.stored_models(workdir, 10, quarantine=True, expect=expect)
  np.testing.assert_array_equal(np.flatnonzero(have), [4, 5, 6])
  assert os.listdir(store.Workdir(workdir).corrupt) == [
      'models_0000007-0000010.npz']
  preds = chunks.load_predictions(workdir, expect=expect)
  np.testing.assert_array_equal(preds['model_ids'], [4, 5, 6])


def test_format_1_chunks_read_without_margins(tmp_path):
  workdir = str(tmp_path)
  new = chunks.read_chunk(chunks.write_chunk(workdir, **_chunk_arrays(),
                                             run_id='x'))
  # A format-1 chunk: no margins, no run id, its own checksum.
  path = store.Workdir(workdir).chunk(4, 7)
  with np.load(path) as f:
    old = {k: f[k] for k in f.files
           if k not in ('train_margin', 'test_margin', 'run_id', 'checksum')}
  old['checksum'] = np.array(chunks._checksum(old))  # pylint: disable=protected-access
  with open(path, 'wb') as f:
    np.savez(f, **old)
  got = chunks.read_chunk(path)
  assert 'train_margin' not in got and got['run_id'] == ''
  np.testing.assert_array_equal(got['masks'], new['masks'])
  # Loaded beside a format-2 chunk: the fields both have.
  chunks.write_chunk(workdir, **dict(_chunk_arrays(), model_ids=np.arange(7, 10)))
  preds = chunks.load_predictions(workdir)
  assert 'train_margin' not in preds and len(preds['model_ids']) == 6


@pytest.mark.integration
def test_a_chunk_copied_over_another_is_set_aside_and_retrained(finished):
  c, workdir, _ = finished
  want = estimates_file.load_estimates(workdir)
  paths = [p for _, _, p in chunks.list_chunks(workdir)]
  shutil.copy(paths[0], paths[1])  # models 0-5 under the name 5-10
  with pytest.raises(errors.StoreError, match='holds models 0-5, not the '
                     'models 5-10 its name says'):
    chunks.read_chunk(paths[1])
  pipeline.run(c, workdir)
  assert os.path.exists(os.path.join(workdir, 'chunks', 'corrupt',
                                     os.path.basename(paths[1])))
  got = estimates_file.load_estimates(workdir)
  np.testing.assert_array_equal(got['mem'], want['mem'])
  np.testing.assert_array_equal(got['infl'], want['infl'])


def test_a_duplicate_model_is_named(tmp_path):
  workdir = str(tmp_path)
  args = dict(masks=np.zeros((2, 8), bool), train_correct=np.zeros((2, 8), bool),
              test_correct=np.zeros((2, 4), bool),
              train_ptrue=np.zeros((2, 8)), test_ptrue=np.zeros((2, 4)),
              loss=np.zeros((2, 1)))
  chunks.write_chunk(workdir, [0, 1], **args)
  chunks.write_chunk(workdir, [1, 2], **args)
  with pytest.raises(errors.StoreError, match='holds model 1 '):
    chunks.load_predictions(workdir)
