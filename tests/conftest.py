import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.path.join(ROOT, '..', 'shared', 'datasets', 'mnist')


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
