import os
import shutil
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.path.join(ROOT, '..', 'shared', 'datasets', 'mnist')


# -- one compilation cache for the session --------------------------------------
# Shared by the xdist workers and every `python -m feldman_zhang.main` a
# test starts (they inherit the environment; the CLI takes
# JAX_COMPILATION_CACHE_DIR over its flag), so a program compiled twice in
# the session compiles once; few are (BENCHMARKS.md: about 2 of 22 CPU
# minutes saved). A cache hit is the same executable, so no result changes.
# Cold at every session: timings do not depend on earlier runs, and no stale
# entry outlives it.
_CACHE_OWNER = 'FELDMAN_ZHANG_TEST_CACHE_OWNER'


# -- XLA's backend at -O0 ----------------------------------------------------------
# LLVM's optimization of XLA's CPU code is two thirds of the suite's compile
# time, and most of the suite's programs run for milliseconds. At -O0 the
# last bits of some results differ from the default level (BENCHMARKS.md:
# the default job's losses in the 7th digit), and two programs that agree
# bit for bit at the default level may not. So no test compares with a
# number made outside the suite, and the tests marked `optimized` (results
# identical across programs, devices, processes or resumes, which is a
# claim about the level users run; full-size models, whose run time -O0
# multiplies) are skipped here and run by the README's second command,
# FELDMAN_ZHANG_TEST_XLA=default python -m pytest -m optimized.
_OPT = '--xla_backend_optimization_level'
_DEFAULT = os.environ.get('FELDMAN_ZHANG_TEST_XLA') == 'default'


def pytest_collection_modifyitems(config, items):
  del config
  if _DEFAULT:
    return
  skip = pytest.mark.skip(reason='at XLA -O0; run with '
                          'FELDMAN_ZHANG_TEST_XLA=default -m optimized')
  for item in items:
    if 'optimized' in item.keywords:
      item.add_marker(skip)


def pytest_configure(config):
  del config
  flags = os.environ.get('XLA_FLAGS', '')
  if not _DEFAULT and _OPT not in flags:  # workers, subprocesses inherit it
    os.environ['XLA_FLAGS'] = f'{flags} {_OPT}=0'.strip()
  if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:  # workers inherit it
    os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(
        prefix='feldman_zhang-test-xla-')
    os.environ[_CACHE_OWNER] = str(os.getpid())
    os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')


def pytest_unconfigure(config):
  del config
  if os.environ.get(_CACHE_OWNER) == str(os.getpid()):
    shutil.rmtree(os.environ.pop('JAX_COMPILATION_CACHE_DIR'),
                  ignore_errors=True)


def make_tiny_config():
  """digits, a small MLP, few models: a full run in seconds."""
  from feldman_zhang import config as config_lib
  c = config_lib.base()
  c.num_models = 12
  c.models_per_device = 5
  c.model.hidden = (32,)
  c.train.epochs = 8
  c.train.batch_size = 64
  c.train.lr = 0.05
  c.summary.top_pairs = 3
  # Concrete dtypes, as resolve.resolve makes them on the CPU: tests build
  # trainers from this config directly, and the trainer takes resolved
  # configs only. auto is tested where it is meant (test_precision, and
  # every run of a config file).
  c.train.update(compute_dtype='float32', momentum_dtype='float32',
                 param_storage='float32')
  return c


@pytest.fixture
def tiny_config():
  return make_tiny_config()


# -- finished runs, trained once per session ------------------------------------
# Most tests read a finished run; those that change it get a copy. Runs and
# subprocesses are what the suite's time goes to (issue 25).


@pytest.fixture(scope='session')
def tiny_template(tmp_path_factory):
  """(workdir, summary) of make_tiny_config()'s finished run. Not to be
  changed: `finished` gives each test a copy."""
  from feldman_zhang import pipeline  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp('tiny_template') / 'run')
  return workdir, pipeline.run(make_tiny_config(), workdir)


@pytest.fixture
def finished(tiny_template, tmp_path):
  """(config, workdir, summary): a copy of the tiny finished run, the test's
  own to change, and the config that made it."""
  template, summary = tiny_template
  workdir = str(tmp_path / 'run')
  shutil.copytree(template, workdir)
  return make_tiny_config(), workdir, summary


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory):
  """(config, workdir) of one finished digits run with dense influence, 16
  models: read it, do not change it."""
  from feldman_zhang import pipeline  # pylint: disable=g-import-not-at-top
  c = make_tiny_config()
  c.num_models = 16
  c.models_per_device = 8
  workdir = str(tmp_path_factory.mktemp('tiny_run') / 'run')
  pipeline.run(c, workdir)
  return c, workdir
