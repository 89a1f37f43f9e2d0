"""The analysis scripts on a finished planted run: pairs, figures, report."""

import base64
import csv
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

from matplotlib import image as mpl_image
import numpy as np
import pytest

import planted
from conftest import ROOT
from feldman_zhang import chunks
from feldman_zhang import data as data_lib
from feldman_zhang import estimates_file
from feldman_zhang import pipeline
from feldman_zhang import store
from feldman_zhang import topk as topk_lib

from feldman_zhang.analysis import export_pairs
from feldman_zhang.analysis import galleries
from feldman_zhang.analysis import plots
from feldman_zhang.analysis import report
from feldman_zhang.analysis import runs

pytestmark = pytest.mark.integration  # runs and subprocesses
# pylint: enable=g-import-not-at-top,wrong-import-position

# A plant whose arbitrary label is what models predict for noise anyway is
# not memorized (test_planted.py: seed 0 has one such); allow two misses.
MISSES = 2


@pytest.fixture(scope='module')
def planted_run(tmp_path_factory):
  """(workdir, planted train ids, planted test ids) of one finished run."""
  root = tmp_path_factory.mktemp('analysis')
  train_ids, test_ids = planted.make(root / 'planted.npz')
  workdir = str(root / 'run')
  pipeline.run(planted.config(root / 'planted.npz'), workdir)
  return workdir, train_ids, test_ids


def _copy_run(workdir, dest, estimates, **config_changes):
  """A workdir with the same data and config files but other estimates."""
  os.makedirs(dest)
  for name in ('run.json', 'summary.json'):
    shutil.copy(os.path.join(workdir, name), dest)
  config = store.read_json(os.path.join(workdir, 'config.json'))
  config['estimate'].update(config_changes)
  store.write_json(os.path.join(dest, 'config.json'), config)
  estimates_file.write_estimates(dest, estimates)
  return str(dest)


def _topk_only(workdir, dest, k):
  """The run as if made with estimate.infl=False, estimate.infl_topk=k."""
  preds = chunks.load_predictions(workdir)
  valid = np.isfinite(preds['loss'][:, -1])  # as pipeline.run_on
  est = {key: v for key, v in estimates_file.load_estimates(workdir).items()
         if not key.startswith('infl')}
  est.update(topk_lib.topk_estimates(preds['masks'][valid],
                                     preds['test_correct'][valid], est['mem'],
                                     k, 0.15, 0.25))
  return _copy_run(workdir, dest, est, infl=False, infl_topk=k)


def _is_png(path):
  pixels = mpl_image.imread(path)
  return pixels.ndim == 3 and min(pixels.shape[:2]) > 0 and pixels.std() > 0


def test_export_puts_planted_pairs_first(planted_run, tmp_path):
  workdir, train_ids, test_ids = planted_run
  run = runs.load_run(workdir, need_infl=True)
  table, paths = export_pairs.export(run, str(tmp_path), grids=4)
  planted_pairs = set(zip(train_ids.tolist(), test_ids.tolist()))

  with open(tmp_path / 'pairs.csv', newline='') as f:
    reader = csv.DictReader(f)
    assert tuple(reader.fieldnames) == export_pairs.COLUMNS
    rows = list(reader)
  top = [(int(r['tr_idx']), int(r['tt_idx']))
         for r in rows[:len(planted_pairs)]]
  assert len(planted_pairs & set(top)) >= len(planted_pairs) - MISSES, top
  assert set(top[:len(planted_pairs) - MISSES]) <= planted_pairs, top
  # Labels are the data set's; the planted twins share theirs.
  ds = run.dataset
  for r in rows:
    assert int(r['train_label']) == ds.y_train[int(r['tr_idx'])]
    assert int(r['test_label']) == ds.y_test[int(r['tt_idx'])]
  assert all(np.isnan(float(r['infl_stderr'])) for r in rows)  # not estimated

  with open(tmp_path / 'pairs.json') as f:
    doc = json.load(f)
  assert doc['num_pairs'] == len(doc['pairs']) == len(rows)
  assert doc['pairs'][0]['infl_stderr'] is None
  assert [(p['tr_idx'], p['tt_idx']) for p in doc['pairs']] == [
      (int(r['tr_idx']), int(r['tt_idx'])) for r in rows]

  with np.load(tmp_path / 'pairs.npz') as f:
    npz = {k: f[k] for k in f.files}
  assert sorted(npz) == ['infl', 'mem', 'tr_idx', 'tt_idx']
  assert npz['tr_idx'].dtype == npz['tt_idx'].dtype == np.int64
  assert npz['infl'].dtype == npz['mem'].dtype == np.float32
  assert len(set(len(v) for v in npz.values())) == 1
  assert len(npz['tr_idx']) == len(rows)
  assert (npz['infl'] >= 0.15).all() and (npz['mem'] >= 0.25).all()
  assert (np.diff(npz['infl']) <= 0).all()
  est = run.estimates
  np.testing.assert_array_equal(npz['infl'],
                                est['infl'][npz['tr_idx'], npz['tt_idx']])
  np.testing.assert_array_equal(npz['mem'], est['mem'][npz['tr_idx']])
  # Every pair passing the thresholds is there.
  passing = (est['infl'] >= 0.15) & (est['mem'][:, None] >= 0.25)
  assert passing.sum() == len(table['tr_idx'])

  assert os.path.join(str(tmp_path), 'pairs.png') in paths
  assert _is_png(tmp_path / 'pairs.png')


def test_thresholds_and_max_pairs(planted_run):
  run = runs.load_run(planted_run[0])
  strict = export_pairs.select_pairs(run.estimates, 0.5, 0.9)
  assert (strict['infl'] >= 0.5).all() and (strict['mem'] >= 0.9).all()
  loose = export_pairs.select_pairs(run.estimates, 0.15, 0.25)
  assert len(strict['tr_idx']) < len(loose['tr_idx'])
  capped = export_pairs.select_pairs(run.estimates, 0.15, 0.25, max_pairs=5)
  for k in capped:
    np.testing.assert_array_equal(capped[k], loose[k][:5])


def test_topk_only_estimates_give_the_same_pairs(planted_run, tmp_path):
  workdir = planted_run[0]
  dense = runs.load_run(workdir)
  # k=2: most pairs come from the pair list, not the top-k lists.
  topk = runs.load_run(_topk_only(workdir, tmp_path / 'topk', k=2),
                       need_infl=True)
  assert 'infl' not in topk.estimates
  a = export_pairs.select_pairs(dense.estimates)
  b = export_pairs.select_pairs(topk.estimates)
  for k in ('tr_idx', 'tt_idx', 'mem', 'mem_stderr'):
    np.testing.assert_array_equal(a[k], b[k])
  np.testing.assert_allclose(a['infl'], b['infl'], atol=1e-6)
  assert export_pairs.topk_caveat(topk, 0.15, 0.25) is None
  # Below the run's pair bars the top-k form knows only a subset.
  assert 'pair_threshold' in export_pairs.topk_caveat(topk, 0.1, 0.25)
  assert 'pair_mem_threshold' in export_pairs.topk_caveat(topk, 0.15, 0.2)
  # So it does when the pair list hit its cap.
  capped = dataclasses.replace(topk, estimates=dict(
      topk.estimates, infl_pairs_dropped=np.int64(3)))
  assert 'cut 3 pairs' in export_pairs.topk_caveat(capped, 0.15, 0.25)
  low_dense = export_pairs.select_pairs(dense.estimates, 0.1)
  low_topk = export_pairs.select_pairs(topk.estimates, 0.1)
  assert (set(zip(low_topk['tr_idx'], low_topk['tt_idx'])) <=
          set(zip(low_dense['tr_idx'], low_dense['tt_idx'])))


def test_galleries_write_images(planted_run, tmp_path):
  run = runs.load_run(planted_run[0])
  figs = galleries.figures(run, per_class=4)
  assert sorted(figs) == ['heldout_acc_hist.png', 'mem_hist.png',
                          'mem_vs_heldout.png', 'most_memorized.png']
  for name, fig in figs.items():
    assert _is_png(plots.save_png(fig, str(tmp_path / name))), name


def _report(run, path):
  return report.write(str(path), report.build(run, grids=4))


def test_report_stands_alone(planted_run, tmp_path):
  run = runs.load_run(planted_run[0])
  with open(_report(run, tmp_path / 'report.html')) as f:
    page = f.read()
  images = re.findall(r'<img src="([^"]*)"', page)
  assert len(images) == 5  # four galleries and the pair grid
  for src in images:
    assert src.startswith('data:image/png;base64,')
    assert base64.b64decode(src.split(',', 1)[1])[:8] == b'\x89PNG\r\n\x1a\n'
  # Nothing else is fetched: the file is the whole report.
  assert not re.search(r'(src|href)="(?!data:)', page)
  num_pairs = len(export_pairs.select_pairs(run.estimates)['tr_idx'])
  s = run.summary
  for text in (f'{s["model_test_acc_mean"]:.4f}', 'Convergence',
               f'<td>{num_pairs}</td>', 'examples with mem &gt;= 0.25',
               'diverged models', 'phases (s)'):
    assert text in page, text


def _browser():
  for name in ('chromium', 'chromium-browser', 'google-chrome'):
    if shutil.which(name):
      return shutil.which(name)
  pytest.skip('no chromium, chromium-browser or google-chrome on PATH')


def test_report_renders_in_a_headless_browser(planted_run, tmp_path):
  browser = _browser()
  path = _report(runs.load_run(planted_run[0]), tmp_path / 'report.html')
  # Once the page has loaded, the title says how many images decoded.
  probe = ('<script>window.addEventListener("load", () => {'
           'const imgs = [...document.images];'
           'document.title = "loaded " + imgs.filter('
           'i => i.complete && i.naturalWidth > 0).length + " of " + '
           'imgs.length;});</script></body>')
  with open(path) as f:
    page = f.read().replace('</body>', probe)
  probed = tmp_path / 'probed.html'
  probed.write_text(page)
  args = [browser, '--headless', '--no-sandbox', '--disable-gpu',
          f'--user-data-dir={tmp_path / "profile"}', '--hide-scrollbars',
          '--virtual-time-budget=10000']
  url = f'file://{probed}'
  dom = subprocess.run(args + ['--dump-dom', url], capture_output=True,
                       text=True, timeout=60)
  title = re.search(r'<title>(.*?)</title>', dom.stdout)
  assert title and title.group(1) == 'loaded 5 of 5', dom.stderr[-2000:]
  shot = tmp_path / 'shot.png'
  subprocess.run(args + ['--window-size=1200,1600', f'--screenshot={shot}',
                         url], capture_output=True, timeout=60)
  assert _is_png(shot)


def test_label_noise_labels_match_training(tiny_config, tmp_path):
  c = tiny_config
  c.num_models = 6
  c.train.epochs = 2
  c.data.label_noise = 0.1
  pipeline.run(c, str(tmp_path / 'run'))
  run = runs.load_run(str(tmp_path / 'run'))  # data fingerprint matches
  np.testing.assert_array_equal(run.dataset.corrupted,
                                run.estimates['label_corrupted'])
  assert 'label noise' in report.build(run, grids=2)


def _script(name, *args):
  return subprocess.run([sys.executable, '-m', f'analysis.{name}', *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize('name', ['export_pairs', 'galleries', 'report'])
def test_workdir_without_estimates_is_one_line_error(name, planted_run,
                                                     tmp_path):
  workdir = tmp_path / 'unfinished'
  workdir.mkdir()
  shutil.copy(os.path.join(planted_run[0], 'run.json'), workdir)
  result = _script(name, f'--workdir={workdir}')
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
      f'error: {workdir} has no estimates.npz: the run has not finished; run '
      'the estimate there first'], result.stderr


def test_estimates_without_influence_is_one_line_error(planted_run, tmp_path):
  workdir = planted_run[0]
  est = {k: v for k, v in estimates_file.load_estimates(workdir).items()
         if not k.startswith('infl')}
  no_infl = _copy_run(workdir, tmp_path / 'no_infl', est, infl=False)
  result = _script('export_pairs', f'--workdir={no_infl}')
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and 'holds no influence estimates' in lines[0], lines
  # The report still renders, and says so.
  assert 'estimated no influence' in report.build(runs.load_run(no_infl))


def test_export_pairs_command_line(planted_run, tmp_path):
  result = _script('export_pairs', f'--workdir={planted_run[0]}',
                   f'--out={tmp_path}', '--grids=2', '--max_pairs=10')
  assert result.returncode == 0, result.stderr
  assert re.match(r'10 pairs with infl >= 0.15 and mem >= 0.25', result.stdout)
  assert sorted(os.listdir(tmp_path)) == ['pairs.csv', 'pairs.json',
                                          'pairs.npz', 'pairs.png']


def test_rgb_images_and_many_classes(tmp_path):
  """The figures take RGB images and cap the classes shown."""
  ds = data_lib.load('random:8x8x3:30:300:60')
  rng = np.random.default_rng(0)
  est = dict(mem=rng.random(300).astype(np.float32),
             mem_stderr=np.full(300, 0.05, np.float32),
             infl=rng.random((300, 60)).astype(np.float32) - 0.6)
  fig = galleries.most_memorized_figure(ds, est['mem'], per_class=3,
                                        max_classes=5)
  assert len(fig.axes) == 5 * 3
  assert _is_png(plots.save_png(fig, str(tmp_path / 'gallery.png')))
  table = export_pairs.with_labels(export_pairs.select_pairs(est), ds)
  fig = export_pairs.grid_figure(ds, table, num_tests=2)
  assert _is_png(plots.save_png(fig, str(tmp_path / 'grid.png')))
  no_pairs = {k: v[:0] for k, v in table.items()}
  assert export_pairs.grid_figure(ds, no_pairs) is None


def test_compare_runs(planted_run, tmp_path):
  from feldman_zhang.analysis import compare_runs
  workdir = planted_run[0]
  same = compare_runs.compare(workdir, workdir)
  assert same['train_correct_differ'] == 0 and same['mem_max_abs_diff'] == 0
  # A run of other t: its predictions compare, its estimates do not.
  est = dict(estimates_file.load_estimates(workdir))
  other = _copy_run(workdir, tmp_path / 'other', dict(
      est, num_models=np.int64(est['num_models'] - 1)))
  shutil.copytree(os.path.join(workdir, 'chunks'),
                  os.path.join(other, 'chunks'))
  diff = compare_runs.compare(workdir, other)
  assert diff['masks_differ'] == 0 and 'mem_max_abs_diff' not in diff
  assert diff['estimates'].startswith('not compared')
  assert same['settings_differ'] == diff['settings_differ'] == 'none'
  # Runs of other settings say so first.
  run = store.read_json(os.path.join(other, 'run.json'))
  run['identity']['config']['train.lr'] = 0.5
  store.write_json(os.path.join(other, 'run.json'), run)
  lr = store.read_json(os.path.join(workdir, 'run.json'))['identity'][
      'config']['train.lr']
  assert compare_runs.compare(workdir, other)['settings_differ'] == [
      f'train.lr (a: {lr!r}, b: 0.5)']


def test_report_shows_experiments_resolved_dtypes_and_no_empty_column(
    planted_run, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(planted_run[0], workdir)
  os.makedirs(os.path.join(workdir, 'drop'))
  with open(os.path.join(workdir, 'drop', 'drop.csv'), 'w') as f:
    f.write('theta,num_removed,fraction_removed,acc_high_mem_removed,'
            'acc_high_mem_removed_se,acc_random_removed,acc_random_removed_se\n'
            '0.5,12,0.009,0.91,0.004,0.93,0.003\n')
  os.makedirs(os.path.join(workdir, 'lastlayer'))
  store.write_json(os.path.join(workdir, 'lastlayer', 'comparison.json'),
                   dict(memorized_full=40, memorized_last=2,
                        head_test_acc_mean=0.87, full_test_acc_mean=0.95))
  page = report.build(runs.load_run(workdir), grids=2)
  assert '<h2>Drop experiment</h2>' in page and '0.004' in page
  assert 'alt="drop.png"' in page  # drawn from drop.csv by the report
  assert '<h2>Last layer only</h2>' in page and 'mean test accuracy' in page
  assert '<td>auto</td>' not in page  # dtypes as they resolved
  assert '<th>infl_stderr</th>' not in page  # NaN everywhere: left out
  assert 'accuracy on their own subsets' in page
  out = _script('report', f'--workdir={workdir}',
                '--out=/proc/no_such_dir/report.html')
  assert out.returncode != 0
  assert out.stderr.strip().splitlines() == [
      'error: cannot write /proc/no_such_dir/report.html: No such file or '
      'directory; name another file with --out']


def test_pair_grid_has_no_empty_band_between_influential_and_random():
  from feldman_zhang import data
  ds = data.load('digits')
  pairs = dict(tt_idx=np.array([0, 1]), tr_idx=np.array([5, 6]),
               infl=np.array([0.5, 0.4]), mem=np.array([0.9, 0.8]))
  fig = export_pairs.grid_figure(ds, pairs, num_tests=2, per_test=3,
                                 random_per_test=3)
  assert len(fig.axes) == 2 * (1 + 1 + 3)  # one influential column, not 3


def test_a_recorded_config_reads_with_the_fields_it_predates():
  from feldman_zhang import config as config_lib
  old = {'seed': 3, 'data': {'source': 'digits'}, 'model': {'name': 'mlp'},
         'gone': 1}  # a run from before most fields existed
  c = config_lib.from_record(old)
  assert c['seed'] == 3 and c['data']['source'] == 'digits' and c['gone'] == 1
  assert c['data']['label_noise'] == 0.0 and c['data']['num_classes'] == 0
  assert c['subset_design'] == 'random' and c['model']['tta'] == 'none'
  assert c['summary']['mem_threshold'] == 0.25
  from feldman_zhang import data  # pylint: disable=g-import-not-at-top
  assert data.from_config(c).name == data.load('digits').name


# -- damaged inputs, full disks, Ctrl-C: one line, a non-zero exit ----------


def _lines(result):
  return result.stderr.strip().splitlines()


def _one_line_error(result):
  lines = _lines(result)
  assert result.returncode != 0 and 'Traceback' not in result.stderr, (
      result.stderr[-3000:])
  assert len(lines) == 1 and lines[0].startswith('error: '), lines
  return lines[0]


def _patched(name, patch, *args):
  """analysis.NAME run with `patch` (Python source) executed first."""
  code = ('import runpy, sys\n' + patch + '\nsys.argv = sys.argv[1:]\n'
          f"runpy.run_module('analysis.{name}', run_name='__main__')")
  return subprocess.run([sys.executable, '-c', code, name, *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


_DROP_CSV = ('theta,num_removed,fraction_removed,acc_high_mem_removed,'
             'acc_high_mem_removed_se,acc_random_removed,'
             'acc_random_removed_se\n0.5,12,0.009,0.91,0.004,0.93,0.003\n')


def _with_experiments(planted_run, dest):
  """A copy of the run with a drop table, a comparison and heads' mem."""
  workdir = str(shutil.copytree(planted_run[0], dest))
  os.makedirs(os.path.join(workdir, 'drop'))
  with open(os.path.join(workdir, 'drop', 'drop.csv'), 'w') as f:
    f.write(_DROP_CSV)
  heads = os.path.join(workdir, 'lastlayer')
  mem = estimates_file.load_estimates(workdir)['mem']
  estimates_file.write_estimates(heads, dict(mem=mem * 0.5,
                                             num_models=np.int64(3)))
  store.write_json(os.path.join(heads, 'comparison.json'),
                   dict(threshold=0.25, memorized_full=40, memorized_last=2,
                        median_full=0.01, median_last=0.0, mean_full=0.05,
                        mean_last=0.01, correlation=0.31234567,
                        head_test_acc_mean=0.87, full_test_acc_mean=0.95,
                        num_models_full=96, num_models_last=96))
  return workdir


def _garbage_csv(workdir):
  path = os.path.join(workdir, 'drop', 'drop.csv')
  open(path, 'wb').write(bytes(range(128, 256)) * 4)
  return path


def _truncated_comparison(workdir):
  path = os.path.join(workdir, 'lastlayer', 'comparison.json')
  data = open(path, 'rb').read()
  open(path, 'wb').write(data[:len(data) // 2])
  return path


def _flipped_head_estimates(workdir):
  path = os.path.join(workdir, 'lastlayer', 'estimates.npz')
  data = bytearray(open(path, 'rb').read())
  data[len(data) // 2] ^= 0xFF
  open(path, 'wb').write(bytes(data))
  return path


@pytest.mark.parametrize('damage, rebuild', [
    (_garbage_csv, '--mode=drop'),
    (_truncated_comparison, '--mode=lastlayer'),
    (_flipped_head_estimates, '--mode=lastlayer'),
])
def test_a_damaged_experiment_file_is_one_line(planted_run, tmp_path, damage,
                                               rebuild):
  workdir = _with_experiments(planted_run, tmp_path / 'run')
  path = damage(workdir)
  for name in ('report', 'experiment_figures'):
    if name == 'experiment_figures' and 'comparison' in path:
      continue  # the figures do not read it
    line = _one_line_error(_script(name, f'--workdir={workdir}'))
    assert path in line and rebuild in line, (name, line)
    assert len(line) < 400


_FULL_DISK = ('import errno, os\n'
              'def full(fd):\n'
              '  raise OSError(errno.ENOSPC, "No space left on device")\n'
              'os.fsync = full')


def _temp_files(root):
  return [os.path.join(r, n) for r, _, names in os.walk(root)
          for n in names if n.startswith('.tmp-')]


@pytest.mark.parametrize('name, args, written', [
    ('export_pairs', ['--grids=2'], 'pairs/pairs.csv'),
    ('galleries', [], 'figures/'),
    ('report', ['--grids=2'], 'report.html'),
    ('experiment_figures', [], 'drop/drop.png'),
    ('release', ['--write_classes=RUN/classes.npz'], 'classes.npz'),
])
def test_a_full_disk_is_one_line_naming_the_file(planted_run, tmp_path, name,
                                                 args, written):
  workdir = _with_experiments(planted_run, tmp_path / 'run')
  args = [a.replace('RUN', workdir) for a in args]
  line = _one_line_error(_patched(name, _FULL_DISK, f'--workdir={workdir}',
                                  *args))
  assert f'cannot write {workdir}/{written}' in line, line
  assert 'No space left on device' in line
  assert not _temp_files(workdir)


def test_a_full_disk_in_consistency_is_one_line(planted_run, tmp_path):
  workdir = planted_run[0]
  out = tmp_path / 'out'
  line = _one_line_error(_patched(
      'consistency', _FULL_DISK, f'--runs={workdir}', f'--reference={workdir}',
      f'--out={out}'))
  assert f'cannot write {out}/consistency.csv: No space left' in line
  assert not _temp_files(out)


@pytest.mark.parametrize('name', ['export_pairs', 'galleries'])
def test_an_unwritable_out_is_one_line(planted_run, tmp_path, name):
  afile = tmp_path / 'afile'
  afile.write_text('x')
  line = _one_line_error(_script(name, f'--workdir={planted_run[0]}',
                                 f'--out={afile}/out'))
  assert f'{afile}/out' in line and 'Not a directory' in line, line
  assert '--out' in line


def test_compare_runs_on_an_unfinished_run_is_one_line(planted_run, tmp_path):
  workdir = planted_run[0]
  unfinished = tmp_path / 'unfinished'
  unfinished.mkdir()
  shutil.copy(os.path.join(workdir, 'run.json'), unfinished)
  shutil.copytree(os.path.join(workdir, 'chunks'), unfinished / 'chunks')
  line = _one_line_error(_script('compare_runs', f'--a={workdir}',
                                 f'--b={unfinished}'))
  assert line == (f'error: {unfinished} has no estimates.npz: the run has '
                  'not finished; run the estimate there first'), line
  assert 'Errno' not in line


@pytest.mark.parametrize('name', ['report', 'export_pairs'])
def test_ctrl_c_in_an_analysis_command_is_one_line(planted_run, name):
  # Ctrl-C as the run is loaded (where the time goes).
  patch = ('from feldman_zhang.analysis import runs\n'
           'def ctrl_c(*args, **kwargs):\n'
           '  raise KeyboardInterrupt\n'
           'runs.load_run = ctrl_c')
  result = _patched(name, patch, f'--workdir={planted_run[0]}')
  assert result.returncode == 130, result.stderr[-3000:]
  assert _lines(result) == ['interrupted']


def test_a_killed_export_never_leaves_a_partial_set(planted_run, tmp_path,
                                                   monkeypatch):
  run = runs.load_run(planted_run[0], need_infl=True)
  out = tmp_path / 'pairs'
  export_pairs.export(run, str(out), grids=2)
  (out / '.tmp-stale').write_bytes(b'a killed write')
  replace = os.replace

  def killed_at_json(src, dst):
    if os.path.basename(dst) == 'pairs.json':
      raise KeyboardInterrupt  # a kill as pairs.json goes into place
    replace(src, dst)

  monkeypatch.setattr(os, 'replace', killed_at_json)
  with pytest.raises(KeyboardInterrupt):
    export_pairs.export(run, str(out), max_pairs=3, grids=0)
  monkeypatch.setattr(os, 'replace', replace)

  def consistent():
    """pairs.npz, where there is one, holds the pairs of pairs.csv (a
    folder without it holds no set: the next export removes the rest)."""
    if not (out / 'pairs.npz').exists():
      return True
    with open(out / 'pairs.csv') as f:
      rows = list(csv.DictReader(f))
    with np.load(out / 'pairs.npz') as f:
      return [int(r['tr_idx']) for r in rows] == f['tr_idx'].tolist()

  assert consistent()
  export_pairs.export(run, str(out), max_pairs=4, grids=0)
  # No grid asked for: the earlier set's pairs.png is gone with it.
  assert consistent() and sorted(os.listdir(out)) == [
      'pairs.csv', 'pairs.json', 'pairs.npz']


def test_analysis_commands_clear_stale_temporary_files(planted_run, tmp_path):
  workdir = _with_experiments(planted_run, tmp_path / 'run')
  stale = [os.path.join(workdir, d, '.tmp-killed')
           for d in ('pairs', 'figures', 'drop', 'lastlayer', '')]
  for path in stale:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, 'wb').write(b'torn')
  for name in ('export_pairs', 'galleries', 'experiment_figures'):
    result = _script(name, f'--workdir={workdir}', *(
        ['--grids=1'] if name == 'export_pairs' else []))
    assert result.returncode == 0, result.stderr[-3000:]
  assert not _temp_files(workdir)


def test_the_noise_caveat_heads_the_report(planted_run):
  run = runs.load_run(planted_run[0])
  assert 'mostly noise' not in report.build(run, grids=0)  # 96 models
  # A summary from before summaries carried caveats: made from its numbers.
  noisy = dict(run.summary, median_mem_stderr_memorizable=0.31)
  noisy.pop('caveats', None)
  page = report.build(dataclasses.replace(run, summary=noisy), grids=0)
  caveat = page.index('these estimates are mostly noise')
  assert caveat < page.index('<h2>Summary</h2>')
  assert 'median mem stderr 0.31' in page


def test_the_report_is_written_for_people(planted_run, tmp_path):
  workdir = _with_experiments(planted_run, tmp_path / 'run')
  with open(os.path.join(workdir, 'drop', 'drop.csv'), 'w') as f:
    f.write(_DROP_CSV.splitlines()[0] + ',models_per_arm\n'
            '0.5,12,0.00914634146,0.912345678,0.00412345678,0.934567891,'
            '0.00312345678,8\n')
  page = report.build(runs.load_run(workdir), grids=2)
  drop_part = page[page.index('<h2>Drop experiment</h2>'):
                   page.index('<h2>Last layer only</h2>')]
  last_part = page[page.index('<h2>Last layer only</h2>'):
                   page.index('<h2>Config</h2>')]
  for raw in ('acc_high_mem_removed', 'fraction_removed', 'models_per_arm'):
    assert raw not in drop_part, raw
  assert '0.912345678' not in drop_part and '0.9123 ± 0.00412' in drop_part
  assert '0.009146' in drop_part and '>8<' in drop_part
  for raw in ('full_test_acc_mean', 'memorized_last', 'num_models_full'):
    assert raw not in last_part, raw
  assert 'mean test accuracy' in last_part and '0.3123' in last_part
  assert '0.31234567' not in last_part
  # One sentence under every figure.
  figures = re.findall(r'<figure>(.*?)</figure>', page, re.S)
  assert len(figures) == len(re.findall('<img ', page)) == 7
  for fig in figures:
    caption = re.search(r'<figcaption>(.*?)</figcaption>', fig, re.S)
    assert caption and caption.group(1).strip().endswith('.'), fig[-300:]


def test_the_experiment_figures_say_what_they_show():
  from feldman_zhang.analysis import experiment_figures
  rows = [dict(theta=t, num_removed=n, fraction_removed=n / 1000,
               acc_high_mem_removed=0.9 - n / 1e4, acc_high_mem_removed_se=0.01,
               acc_random_removed=0.9, acc_random_removed_se=0.01,
               models_per_arm=8) for t, n in ((0.9, 10), (0.5, 40), (0.1, 200))]
  ax = experiment_figures.drop_figure(rows, 'digits').axes[0]
  labels = [t.get_text() for t in ax.texts]
  assert all(any(f'θ={r["theta"]:g}' in s for s in labels) for r in rows)
  assert '8 models per arm' in ax.get_title()
  rng = np.random.default_rng(0)
  ax = experiment_figures.lastlayer_figure(
      rng.random(50), rng.random(50), 'digits').axes[0]
  assert ax.get_title() == 'digits: full network vs last layer'


def test_the_report_shows_membership_and_the_lds_where_they_ran(finished):
  # Issue 26, item 5: mem against LiRA's per-example vulnerability, and the
  # LDS with its curve, in the run's report once those commands have run.
  _, workdir, _ = finished
  for name, args in (('membership', [f'--workdir={workdir}', '--targets=4']),
                     ('lds', [f'--scores={workdir}', f'--eval={workdir}'])):
    result = _script(name, *args)
    assert result.returncode == 0, result.stderr
  result = _script('report', f'--workdir={workdir}', '--grids=0')
  assert result.returncode == 0, result.stderr
  page = open(os.path.join(workdir, 'report.html')).read()
  assert '<h2>Membership inference (LiRA)</h2>' in page
  assert '<h2>Linear datamodeling score of the influence</h2>' in page
  assert 'mem_vs_vulnerability.png' in page and 'lds_curve.png' in page
  assert page.count('online_fixed') >= 1 and 'infl_margin' in page


def test_estimates_of_another_run_are_refused(finished, tmp_path):
  # Issue 27, item 3: the data is the same, the run is not.
  from feldman_zhang import errors  # pylint: disable=g-import-not-at-top
  c, workdir, _ = finished
  c.update(seed=1, num_models=4)
  c.train.epochs = 1
  other = str(tmp_path / 'other')
  pipeline.run(c, other)
  for name in os.listdir(other):
    if name.startswith(('estimates', 'infl')):
      shutil.copy(os.path.join(other, name), workdir)
  with pytest.raises(errors.StoreError, match='made by another run'):
    runs.load_run(workdir)
  result = _script('export_pairs', f'--workdir={workdir}',
                   f'--out={tmp_path / "pairs"}')
  assert result.returncode != 0
  assert result.stderr.strip().count('\n') == 0, result.stderr
  assert 'made by another run' in result.stderr


def test_readers_trust_the_config_the_estimates_were_made_with(finished):
  c, workdir, _ = finished
  config_json = os.path.join(workdir, 'config.json')
  # A kill after a lower num_models' config.json, before its estimates.
  other = store.read_json(config_json)
  other['num_models'] = 3
  store.write_json(config_json, other)
  run = runs.load_run(workdir)
  assert run.config['num_models'] == c.num_models
  assert int(run.estimates['num_models']) == c.num_models
