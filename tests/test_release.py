"""The paper's release layouts: per-class influence blocks and pair files."""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from feldman_zhang import chunks
from feldman_zhang import errors
from feldman_zhang import estimate
from feldman_zhang import estimates_file
from feldman_zhang import pipeline
from feldman_zhang import paper_files
from feldman_zhang import store

from feldman_zhang.analysis import export_pairs
from feldman_zhang.analysis import release as release_script
from feldman_zhang.analysis import release_compare
from feldman_zhang.analysis import runs

pytestmark = pytest.mark.integration  # runs and subprocesses


def _assert_blocks_are_dense(blocks, ds, infl):
  seen = []
  for b in blocks:
    np.testing.assert_array_equal(b.tr_idx, np.flatnonzero(ds.y_train ==
                                                           b.label))
    np.testing.assert_array_equal(b.tt_idx, np.flatnonzero(ds.y_test ==
                                                           b.label))
    assert b.infl.dtype == np.float32
    np.testing.assert_array_equal(b.infl, infl[np.ix_(b.tr_idx, b.tt_idx)])
    seen.append(b.label)
  assert seen == list(range(ds.num_classes))


def test_class_blocks_equal_the_dense_estimate(tiny_run):
  _, workdir = tiny_run
  run = runs.load_run(workdir)
  infl = run.estimates['infl']
  _assert_blocks_are_dense(release_script.class_blocks(run), run.dataset, infl)
  # The blocks are not trivially so: they vary, and differ by class.
  assert len(np.unique(infl)) > 10


def test_class_blocks_leave_out_diverged_models(tiny_run, tmp_path):
  c, workdir = tiny_run
  copy = str(tmp_path / 'run')
  shutil.copytree(workdir, copy)
  for _, _, path in chunks.list_chunks(copy):
    chunk = chunks.read_chunk(path)
    # Diverged in an early epoch only: finite at the end, still left out.
    chunk['loss'][np.isin(chunk['model_ids'], [2, 9]), 0] = np.inf
    chunks.write_chunk(copy, **chunk)
  pipeline.run(c, copy)  # re-estimates without them; trains nothing
  run = runs.load_run(copy)
  np.testing.assert_array_equal(run.estimates['diverged_models'], [2, 9])
  infl = run.estimates['infl']
  assert not np.array_equal(infl,
                            estimates_file.load_estimates(workdir)['infl'])
  _assert_blocks_are_dense(release_script.class_blocks(run), run.dataset, infl)


def test_infl_per_class_empty_groups_subsets_and_empty_classes():
  """Against estimate.estimate itself on counts that hit every edge: an
  example in every model or in none (an empty group's mean is 1/2), an odd
  t, classes asked out of order, a class with no examples."""
  rng = np.random.default_rng(0)
  t, n, n_test = 7, 40, 23
  masks = rng.random((t, n)) < 0.6
  masks[:, 0], masks[:, 1] = True, False
  test_correct = rng.random((t, n_test)) < 0.7
  y_train, y_test = rng.integers(0, 3, n), rng.integers(0, 3, n_test)
  y_train[:2] = 0, 2  # the edge examples in classes asked for
  want = estimate.estimate(masks, masks, test_correct)['infl']
  blocks = list(paper_files.infl_per_class(masks, test_correct, y_train, y_test,
                                       4, classes=[2, 0, 3]))
  assert [b.label for b in blocks] == [2, 0, 3]
  for b in blocks[:2]:
    np.testing.assert_array_equal(b.infl, want[np.ix_(b.tr_idx, b.tt_idx)])
  assert blocks[2].infl.shape == (0, 0)
  # The edges were hit: an empty group's mean is 1/2.
  np.testing.assert_allclose(want[0], test_correct.mean(0) - 0.5, atol=1e-6)
  np.testing.assert_allclose(want[1], 0.5 - test_correct.mean(0), atol=1e-6)


def test_class_file_round_trips(tiny_run, tmp_path):
  _, workdir = tiny_run
  run = runs.load_run(workdir)
  path = release_script.write_classes(run, str(tmp_path / 'classes.npz'))
  doc = paper_files.read_class_file(path)
  ds = run.dataset
  np.testing.assert_array_equal(doc['tr_labels'], ds.y_train)
  np.testing.assert_array_equal(doc['tt_labels'], ds.y_test)
  np.testing.assert_array_equal(doc['tr_mem'], run.estimates['mem'])
  assert sorted(doc['classes']) == list(range(ds.num_classes))
  _assert_blocks_are_dense(doc['classes'].values(), ds, run.estimates['infl'])
  # The layout's own names, readable without this module.
  with np.load(path) as f:
    assert {'tr_labels', 'tt_labels', 'tr_mem', 'infl_matrix_class3',
            'tr_classidx_3', 'tt_classidx_3'} <= set(f.files)
    assert f['infl_matrix_class3'].dtype == np.float32
    assert f['tr_classidx_3'].dtype == np.int64


def test_pair_file_of_export_pairs_reads(tiny_run, tmp_path):
  _, workdir = tiny_run
  run = runs.load_run(workdir, need_infl=True)
  table, _ = export_pairs.export(run, str(tmp_path), grids=0)
  pairs = paper_files.read_pair_file(str(tmp_path / 'pairs.npz'))
  assert len(pairs['tr_idx']) > 0
  for k in paper_files.PAIR_FIELDS:
    np.testing.assert_array_equal(pairs[k], table[k])


def _script(*args):
  return subprocess.run([sys.executable, '-m', 'analysis.release', *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_compare_with_own_files_agrees_fully(tiny_run, tmp_path):
  _, workdir = tiny_run
  run = runs.load_run(workdir, need_infl=True)
  export_pairs.export(run, str(tmp_path), grids=0)
  classes = str(tmp_path / 'classes.npz')
  result = _script(f'--workdir={workdir}', f'--write_classes={classes}')
  assert result.returncode == 0, result.stderr
  result = _script(f'--workdir={workdir}',
                   f'--compare={tmp_path}/pairs.npz,{classes}',
                   f'--out={tmp_path}')
  assert result.returncode == 0, result.stderr
  assert 'jaccard' in result.stdout
  got = store.read_json(str(tmp_path / 'compare.json'))
  assert got['run_pairs'] == got['released_pairs'] == got['overlap'] > 0
  assert got['jaccard'] == 1.0
  assert got['mem_correlation_pairs'] == pytest.approx(1.0)
  assert got['mem_correlation_classes'] == pytest.approx(1.0)
  assert got['near_duplicates_released'] > 0
  assert got['near_duplicates_found'] == got['near_duplicates_released']
  assert got['class_jaccard'] == 1.0 and got['class_run_pairs'] > 0
  assert got['labels_agree']


def test_compare_with_other_files_disagrees(tiny_run, tmp_path):
  _, workdir = tiny_run
  run = runs.load_run(workdir, need_infl=True)
  table, _ = export_pairs.export(run, str(tmp_path), grids=0)
  # Half the pairs, with the test indices of the other half: another run.
  rng = np.random.default_rng(0)
  half = len(table['tr_idx']) // 2
  other = {k: np.asarray(table[k]).copy() for k in paper_files.PAIR_FIELDS}
  other['tt_idx'][:half] = rng.permutation(other['tt_idx'][:half])
  other['mem'] = rng.permutation(other['mem'])
  path = str(tmp_path / 'other.npz')
  np.savez(path, **other)
  got = release_compare.compare(run, path)
  assert got['jaccard'] < 1.0
  assert got['mem_correlation_pairs'] < 0.99


def _malformed(tmp_path):
  garbage = tmp_path / 'garbage.npz'
  garbage.write_bytes(b'not a zip file at all')
  missing = tmp_path / 'missing.npz'
  np.savez(missing, tr_idx=np.arange(3), tt_idx=np.arange(3),
           infl=np.ones(3, np.float32))
  ragged = tmp_path / 'ragged.npz'
  np.savez(ragged, tr_idx=np.arange(3), tt_idx=np.arange(2),
           infl=np.ones(3, np.float32), mem=np.ones(3, np.float32))
  return [str(p) for p in (garbage, missing, ragged)]


def test_malformed_files_are_one_line_store_errors(tmp_path):
  for path in _malformed(tmp_path):
    with pytest.raises(errors.StoreError) as e:
      paper_files.read_pair_file(path)
    assert path in str(e.value) and '\n' not in str(e.value)
  bad_block = tmp_path / 'bad_block.npz'
  np.savez(bad_block, tr_labels=np.zeros(4, int), tt_labels=np.zeros(2, int),
           tr_mem=np.zeros(4, np.float32), tr_classidx_0=np.arange(4),
           tt_classidx_0=np.arange(2),
           infl_matrix_class0=np.zeros((4, 3), np.float32))
  no_index = tmp_path / 'no_index.npz'
  np.savez(no_index, tr_labels=np.zeros(4, int), tt_labels=np.zeros(2, int),
           tr_mem=np.zeros(4, np.float32),
           infl_matrix_class0=np.zeros((4, 2), np.float32))
  out_of_range = tmp_path / 'out_of_range.npz'
  np.savez(out_of_range, tr_labels=np.zeros(4, int), tt_labels=np.zeros(2, int),
           tr_mem=np.zeros(4, np.float32), tr_classidx_0=np.arange(1, 5),
           tt_classidx_0=np.arange(2),
           infl_matrix_class0=np.zeros((4, 2), np.float32))
  for path, why in ((bad_block, 'infl_matrix_class0 is'),
                    (no_index, 'has no tr_classidx_0'),
                    (out_of_range, re.escape('outside [0, 4)')),
                    (tmp_path / 'garbage.npz', 'not a readable')):
    with pytest.raises(errors.StoreError, match=why) as e:
      paper_files.read_class_file(str(path))
    assert '\n' not in str(e.value)


def test_malformed_file_on_the_command_line(tiny_run, tmp_path):
  _, workdir = tiny_run
  path = _malformed(tmp_path)[1]
  result = _script(f'--workdir={workdir}', f'--compare={path}',
                   f'--out={tmp_path}')
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and (
      'has no mem' in lines[0]), lines
  assert not os.path.exists(tmp_path / 'compare.json')
