"""A run's identity: what it records, what a resume must match, old records."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from feldman_zhang import chunks
from feldman_zhang import config as config_lib
from feldman_zhang import data
from feldman_zhang import errors
from feldman_zhang import identity as identity_lib
from feldman_zhang import prepare
from feldman_zhang import resolve
from feldman_zhang import store


def test_resume_on_another_backend_dtype_is_refused(tmp_path, tiny_config):
  ds = data.load('digits')
  ident = identity_lib.identity(tiny_config, ds)
  assert ident['dtypes'] == {'compute_dtype': 'float32',  # auto, on the CPU
                             'momentum_dtype': 'float32'}
  workdir = str(tmp_path / 'run')
  identity_lib.check_identity(workdir, ident)  # records it
  _stored_chunk(workdir)
  identity_lib.check_identity(workdir, ident)  # the same run resumes
  # The same config run on an accelerator resolves auto to bf16.
  gpu = dict(ident, dtypes=dict(ident['dtypes'], momentum_dtype='bfloat16'))
  with pytest.raises(errors.StoreError, match='dtypes differ'):
    identity_lib.check_identity(workdir, gpu)


def _stored_chunk(workdir, n=4, n_test=2):
  z = np.zeros((1, n), bool)
  chunks.write_chunk(workdir, [0], z, z, np.zeros((1, n_test), bool),
                     np.zeros((1, n)), np.zeros((1, n_test)), np.zeros((1, 1)))


def test_identity_of_a_workdir_without_results_is_replaced(tiny_config,
                                                           tmp_path):
  # A first attempt that failed before storing a model must not lock the
  # workdir to its settings.
  workdir, c = str(tmp_path / 'run'), tiny_config
  ds = prepare.prepare(c).ds
  identity_lib.check_identity(workdir, identity_lib.identity(c, ds))
  c.train.lr = 0.2
  identity_lib.check_identity(workdir, identity_lib.identity(c, ds))
  recorded = store.read_json(os.path.join(workdir, 'run.json'))['identity']
  assert recorded['config']['train.lr'] == 0.2
  _stored_chunk(workdir)
  c.train.lr = 0.3
  with pytest.raises(identity_lib.IdentityError) as e:
    identity_lib.check_identity(workdir, identity_lib.identity(c, ds))
  assert e.value.diffs == ['config.train.lr']


def test_where_the_data_lies_is_not_part_of_the_identity(tiny_config,
                                                         tmp_path):
  workdir, c = str(tmp_path / 'run'), tiny_config
  ds = prepare.prepare(c).ds
  ident = identity_lib.identity(c, ds)
  assert not set(config_lib.LOCATION_FIELDS) & set(ident['config'])
  # Runs recorded before kept the data's path: they resume from elsewhere.
  old = dict(ident, config={**ident['config'], 'data.source': 'npz:/old.npz',
                            'data.data_dir': '/old', 'data.download': True})
  _stored_chunk(workdir)
  store.write_json(os.path.join(workdir, 'run.json'), dict(identity=old))
  identity_lib.check_identity(workdir, ident)
  with open(os.path.join(workdir, 'run.json'), 'w') as f:
    f.write('{"identity": ')
  with pytest.raises(errors.StoreError, match='run.json is unreadable'):
    identity_lib.check_identity(workdir, ident)


def test_differences_name_every_field_and_top_level_key():
  a = dict(data='x', dtypes={}, trainer_version=1, format_version=1,
           config={'seed': 0, 'train.lr': 0.1})
  b = dict(a, data='y', config={'seed': 0, 'train.lr': 0.2, 'model.tta': 'none'})
  assert identity_lib.differences(a, b) == {
      'data': ('x', 'y'), 'config.model.tta': (None, 'none'),
      'config.train.lr': (0.1, 0.2)}
  assert identity_lib.differences(a, a) == {}


def test_how_a_result_is_computed_is_not_part_of_the_identity(tiny_config):
  ds = data.load('digits')
  c = resolve.resolve(tiny_config, 'cpu')
  g = resolve.resolve(tiny_config, 'gpu')
  assert c.model.conv_weight_grad == 'matmul'
  assert g.model.conv_weight_grad == 'xla'
  fields = identity_lib.identity(c, ds)['config']
  assert 'model.conv_weight_grad' not in fields
  assert not {k for k in fields if k.split('.')[0] in
              config_lib.SCHEDULING_FIELDS}


@pytest.mark.integration
def test_a_corrupt_run_json_is_one_short_line_everywhere(finished):
  c, workdir, _ = finished
  path = os.path.join(workdir, 'run.json')
  data = bytearray(open(path, 'rb').read())
  data[len(data) // 3] = 0xDF  # not UTF-8 any more
  open(path, 'wb').write(bytes(data))
  for cmd in ([sys.executable, '-m', 'analysis.report', f'--workdir={workdir}'],
              [sys.executable, '-m', 'feldman_zhang.main',
               '--config=configs/digits_mlp.py', f'--workdir={workdir}',
               '--compilation_cache=']):
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode != 0 and 'Traceback' not in out.stderr, out.stderr
    # The reason, not the file's bytes.
    assert last.startswith('error: ') and 'run.json is unreadable' in last
    assert len(last) < 400 and 'new --workdir' in last
