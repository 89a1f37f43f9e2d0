"""The command line: bad input is one clear line, a non-zero exit, no files;
help, where the results went, and Ctrl-C or SIGTERM stop in one line and
keep what was trained."""

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from feldman_zhang import chunks as chunks_lib

pytestmark = pytest.mark.integration  # runs and subprocesses


def _cli(workdir, *overrides, env=None):
  # No compilation cache in the user's home unless a test names one.
  cache = ([] if any(o.startswith('--compilation_cache') for o in overrides)
           else ['--compilation_cache='])
  return subprocess.run(
      [sys.executable, '-m', 'feldman_zhang.main',
       '--config=configs/digits_mlp.py', f'--workdir={workdir}', *cache,
       *overrides], cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=env)


@pytest.mark.parametrize('override, message', [
    ('--config.data.source=cifar', 'unknown data source'),
    ('--config.data.source=idx:/no/such/dir', 'does not exist'),
    ('--config.data.source=npz:/no/such/file.npz', 'does not exist'),
    ('--config.subset_ratio=1.5', 'subset_ratio must lie in (0, 1)'),
    ('--config.subset_ratio=0.0', 'subset_ratio must lie in (0, 1)'),
    ('--config.num_models=0', 'num_models must be >= 1'),
    ('--config.data.num_classes=5', 'labels out of range'),
    ('--config.num_modelz=5',
     'unknown config field --config.num_modelz; did you mean "num_models"'),
    ('--config.zzz_field=5', 'unknown config field --config.zzz_field'),
    ('--config.estimate.infl=maybe',
     'estimate.infl must be auto, True or False'),
    ('--config.train.lr=fast', "could not convert string to float"),
    ('--config.train.epochs=ten', "train.epochs must be a number > 0 (got 'ten')"),
    ('--config.train.epochs=0', 'train.epochs must be > 0'),
    ('--config.model.name=transformer', 'unknown model'),
    ('--config.vectorize=pmap', 'vectorize must be vmap or map'),
    ('--config.train.momentum_dtype=float16',
     'train.momentum_dtype must be auto, float32 or bfloat16'),
    ('--config.train.batch_size=1000', "exceeds the subsets' m=910 examples"),
    ('--config.seed=4294967296', 'seed must lie in [0, 2**32)'),
    ('--config.train.crop_padding=-1', 'train.crop_padding must be >= 0'),
    ('--config.estimate.infl_topk=-1', 'estimate.infl_topk must be >= 0'),
    ('--config.drop.thresholds=()', 'drop.thresholds must not be empty'),
    ('--config.lastlayer.models_per_device=0',
     'lastlayer.models_per_device must be >= 1'),
    ('--config.data.source=random:8x8x1:10:-5:10', 'bad random source'),
    ('--config=configs/no_such.py',
     'error: --config file configs/no_such.py does not exist'),
    ('--config.train.epochs=1e-9',
     'train.epochs=1e-09 trains no step on subsets of m=910'),
    ('--config=configs/digits_mlp.py:arg',
     'TypeError: get_config() takes 0 positional arguments'),
])
def test_bad_input(tmp_path, override, message):
  workdir = tmp_path / 'run'
  result = _cli(workdir, override)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and message in last, result.stderr
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()


@pytest.mark.parametrize('text, message', [
    ('def get_config(:\n  pass\n', 'SyntaxError: invalid syntax (broken.py, '
     'line 1)'),
    ('X = 1\n', 'has no get_config()'),
    ('import no_such_module_zz\n', "ModuleNotFoundError: No module named "
     "'no_such_module_zz'"),
    ('def get_config():\n  return 1 / 0\n', 'ZeroDivisionError'),
])
def test_a_broken_config_file_is_one_line(tmp_path, text, message):
  path = tmp_path / 'broken.py'
  path.write_text(text)
  result = _cli(tmp_path / 'run', f'--config={path}')
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      f'error: cannot load --config {path}: ') and message in lines[0], lines
  assert not (tmp_path / 'run').exists()


def test_labels_out_of_range_in_file(tmp_path):
  x = np.zeros((10, 4, 4), np.uint8)
  y = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 12])
  np.savez(tmp_path / 'bad.npz', x_train=x, y_train=y, x_test=x, y_test=y % 4,
           num_classes=np.int64(4))
  result = _cli(tmp_path / 'run', f'--config.data.source=npz:{tmp_path}/bad.npz')
  assert result.returncode != 0
  assert 'labels out of range [0, 4), e.g. 12' in result.stderr
  assert not (tmp_path / 'run').exists()


def _tiny_images_npz(path):
  np.savez(path, x_train=np.zeros((50, 2, 2, 1), np.uint8),
           y_train=np.arange(50) % 2, x_test=np.zeros((10, 2, 2, 1), np.uint8),
           y_test=np.arange(10) % 2)


@pytest.mark.parametrize('make, overrides, message', [
    (_tiny_images_npz, ['--config.model.name=cnn'],  # pooled to nothing
     "model.name=cnn cannot take npz:"),
    (lambda path: open(path, 'wb').write(b'not a zip'), [],
     'is not an npz file'),
    (lambda path: np.savez(path, x_train=np.zeros((4, 2)), y_train=np.zeros(4),
                           x_test=np.zeros((2, 2)), y_test=np.zeros(2),
                           num_classes=np.array([2, 3])), [],
     'num_classes must be one integer'),
])
def test_bad_data_file(tmp_path, make, overrides, message):
  make(tmp_path / 'data.npz')
  result = _cli(tmp_path / 'run', f'--config.data.source=npz:{tmp_path}/data.npz',
                '--config.train.batch_size=8', *overrides)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and message in last, result.stderr
  assert not (tmp_path / 'run').exists()


def test_workdir_that_is_a_file(tmp_path):
  (tmp_path / 'run').write_text('x')
  result = _cli(tmp_path / 'run')
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == (
      f'error: --workdir {tmp_path}/run is a file, not a directory')


def test_small_job_runs(tmp_path):
  job = ('--config.num_models=6', '--config.models_per_device=3',
         '--config.train.epochs=2', f'--compilation_cache={tmp_path}/xla')
  env = {k: v for k, v in os.environ.items()
         if k != 'JAX_COMPILATION_CACHE_DIR'}
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  result = _cli(tmp_path / 'run', *job, env=env)
  assert result.returncode == 0, result.stderr
  assert os.listdir(tmp_path / 'xla')  # the compiled programs, for a rerun
  # A rerun loads them and computes the same bits.
  again = _cli(tmp_path / 'again', *job, env=env)
  assert again.returncode == 0, again.stderr
  for name in os.listdir(tmp_path / 'run'):
    if name.startswith(('estimates', 'infl-')):
      assert (open(tmp_path / 'run' / name, 'rb').read() ==
              open(tmp_path / 'again' / name, 'rb').read()), name
  assert '6 models on digits' in result.stdout
  assert 'models 6/6 (100%)' in result.stderr  # progress lines
  assert 'with 6 models these estimates are mostly noise' in result.stdout
  assert os.path.exists(tmp_path / 'run' / 'estimates.npz')


def test_an_unwritable_cache_is_one_warning(tmp_path):
  env = {k: v for k, v in os.environ.items()
         if k != 'JAX_COMPILATION_CACHE_DIR'}  # the suite's (conftest) wins
  result = _cli(tmp_path / 'run', '--config.num_models=4',
                '--config.models_per_device=2', '--config.train.epochs=1',
                '--compilation_cache=/proc', env=env)
  assert result.returncode == 0, result.stderr
  assert result.stderr.count('no compilation cache at /proc') == 1
  assert 'Error writing persistent compilation cache' not in result.stderr


def test_the_environment_names_the_cache_and_every_program_goes_in(tmp_path):
  env = {k: v for k, v in os.environ.items()
         if k != 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'}
  env['JAX_COMPILATION_CACHE_DIR'] = str(tmp_path / 'env')
  result = _cli(tmp_path / 'run', '--config.num_models=4',
                '--config.models_per_device=2', '--config.train.epochs=1',
                f'--compilation_cache={tmp_path}/flag', env=env)
  assert result.returncode == 0, result.stderr
  assert not os.path.exists(tmp_path / 'flag')
  # The estimate's programs compile in well under JAX's default 1 s bar.
  assert [f for f in os.listdir(tmp_path / 'env') if '_memorization' in f]


def _main(*args):
  return subprocess.run([sys.executable, '-m', 'feldman_zhang.main', *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_help_exits_zero_and_names_config_overrides():
  for flag in ('--help', '--helpfull'):
    out = _main(flag)
    assert out.returncode == 0, out.stderr
    assert '--config.FIELD=VALUE' in out.stdout


def test_a_missing_config_file_is_one_line(tmp_path):
  out = _main('--config=configs/nope.py', '--config.num_models=3',
              f'--workdir={tmp_path}/run')
  assert out.returncode != 0
  assert out.stderr.strip() == 'error: --config file configs/nope.py does not exist'


def test_the_job_says_where_its_results_went_and_no_tpu_warning(tmp_path):
  out = _main('--config=configs/digits_mlp.py', f'--workdir={tmp_path}/run',
              '--config.num_models=4', '--config.models_per_device=4',
              '--config.train.epochs=1', '--compilation_cache=')
  assert out.returncode == 0, out.stderr
  assert f'results: {tmp_path}/run/ estimates.npz' in out.stdout
  assert "Unable to initialize backend 'tpu'" not in out.stderr


def test_ctrl_c_is_one_line_and_the_rerun_resumes(tmp_path):
  workdir = tmp_path / 'run'
  # A suite started in the background (`pytest &` from a script) has SIGINT
  # ignored, and a child inherits that: it would never see Ctrl-C. A handled
  # signal is reset to the default by exec, so the job gets its own.
  ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
  if ignored:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    proc = subprocess.Popen(
        [sys.executable, '-m', 'feldman_zhang.main',
         '--config=configs/digits_mlp.py', f'--workdir={workdir}',
         '--config.num_models=4000', '--config.models_per_device=20',
         '--compilation_cache='],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  finally:
    if ignored:
      signal.signal(signal.SIGINT, signal.SIG_IGN)
  deadline = time.time() + 120
  while not glob.glob(str(workdir / 'chunks' / 'models_*.npz')):
    assert time.time() < deadline and proc.poll() is None
    time.sleep(0.2)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err
  assert err.strip().splitlines()[-1] == (
      f'interrupted: the models stored in {workdir} are kept; re-running the '
      'same command resumes')
  assert 'Traceback' not in err


def _start_job(workdir, *extra):
  """The digits job, long enough to be stopped, with SIGINT deliverable."""
  # A suite started in the background (`pytest &` from a script) has SIGINT
  # ignored, and a child inherits that; a handled signal is reset by exec.
  ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
  if ignored:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    return subprocess.Popen(
        [sys.executable, '-m', 'feldman_zhang.main',
         '--config=configs/digits_mlp.py', f'--workdir={workdir}',
         '--config.num_models=4000', '--config.models_per_device=20',
         '--compilation_cache=', *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  finally:
    if ignored:
      signal.signal(signal.SIGINT, signal.SIG_IGN)


def _first_chunk(proc, workdir):
  deadline = time.time() + 120
  while not glob.glob(str(workdir / 'chunks' / 'models_*.npz')):
    assert time.time() < deadline and proc.poll() is None
    time.sleep(0.1)


def test_sigterm_stops_at_the_next_call_and_keeps_what_was_trained(tmp_path):
  workdir = tmp_path / 'run'
  proc = _start_job(workdir)
  _first_chunk(proc, workdir)
  proc.send_signal(signal.SIGTERM)
  begin = time.time()
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err
  assert time.time() - begin < 30  # not the 4,000 models
  lines = err.strip().splitlines()
  assert lines[-1] == (f'interrupted: the models stored in {workdir} are '
                       'kept; re-running the same command resumes')
  assert sum('SIGTERM: stopping after the ' in line for line in lines) == 1, err
  assert 'Traceback' not in err
  chunks = chunks_lib.list_chunks(str(workdir))
  assert chunks and not glob.glob(str(workdir / 'chunks' / '.tmp-*'))
  for _, _, path in chunks:
    chunks_lib.read_chunk(path)
  # Each call trained is stored: nothing is lost but the calls not started.
  assert sum(stop - start for start, stop, _ in chunks) % 20 == 0


def test_a_second_signal_exits_at_once(tmp_path):
  workdir = tmp_path / 'run'
  proc = _start_job(workdir, '--config.train.epochs=200')  # slow calls
  _first_chunk(proc, workdir)
  proc.send_signal(signal.SIGINT)
  time.sleep(0.5)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 130, err
  assert 'Traceback' not in err
