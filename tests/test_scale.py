"""Devices, processes and kills do not change the estimates, bit for bit."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from feldman_zhang import chunks
from feldman_zhang import estimates_file
from feldman_zhang import schedule

pytestmark = [pytest.mark.integration,  # runs and subprocesses
              pytest.mark.optimized]

TINY = ['--config=configs/digits_mlp.py', '--config.model.hidden=(32,)',
        '--config.train.epochs=4', '--config.models_per_device=2',
        '--compilation_cache=']  # none in the user's home


def _cmd(workdir, *flags):
  return [sys.executable, '-m', 'feldman_zhang.main', f'--workdir={workdir}',
          *TINY, *flags]


def _env(devices=1):
  env = dict(os.environ)
  # Added to the suite's own flags (conftest: its optimization level).
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                      f' --xla_force_host_platform_device_count={devices}')
  return env


def _run(workdir, *flags, devices=1):
  result = subprocess.run(_cmd(workdir, *flags), cwd=ROOT, env=_env(devices),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _assert_same_estimates(a, b):
  ea, eb = estimates_file.load_estimates(a), estimates_file.load_estimates(b)
  assert sorted(ea) == sorted(eb)
  for k in ea:
    np.testing.assert_array_equal(ea[k], eb[k], err_msg=k)


def test_same_estimates_on_1_2_8_devices(tmp_path):
  for d in (1, 2, 8):
    result = _run(tmp_path / f'd{d}', '--config.num_models=20', devices=d)
    assert f'per device on {d} cpu devices' in result.stderr
  _assert_same_estimates(tmp_path / 'd1', tmp_path / 'd2')
  _assert_same_estimates(tmp_path / 'd1', tmp_path / 'd8')


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
  _run(tmp_path / 'one', '--config.num_models=12')
  port = _free_port()
  procs = [subprocess.Popen(
      _cmd(tmp_path / 'two', '--config.num_models=12',
           f'--coordinator_address=localhost:{port}', '--num_processes=2',
           f'--process_id={i}'),
      cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[1][1][-3000:]
  assert 'process 1 trained 6 models' in outs[1][1]
  _assert_same_estimates(tmp_path / 'one', tmp_path / 'two')


def test_sigkill_then_resume_is_bit_identical(tmp_path):
  _run(tmp_path / 'whole', '--config.num_models=40')
  killed = tmp_path / 'killed'
  proc = subprocess.Popen(_cmd(killed, '--config.num_models=40'), cwd=ROOT,
                          env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while len(chunks.list_chunks(killed)) < 3 and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = len(chunks.list_chunks(killed))
  assert 3 <= done < 20 and not os.path.exists(
      estimates_file.estimates_path(killed))
  result = _run(killed, '--config.num_models=40')
  assert f'training {40 - 2 * done} models' in result.stderr
  _assert_same_estimates(tmp_path / 'whole', killed)


def test_processes_with_other_device_counts_are_refused(monkeypatch,
                                                        tiny_config):
  # 2 devices on process 0 and 1 on process 1: their grids of cells would
  # differ, training some models twice and others never.
  import collections
  import jax
  from feldman_zhang import errors
  fake = collections.namedtuple('Device', 'process_index')
  monkeypatch.setattr(jax, 'devices', lambda: [fake(0), fake(0), fake(1)])
  with pytest.raises(errors.ConfigError,
                     match=r'different numbers of devices \({0: 2, 1: 1}'):
    schedule.models_per_call(tiny_config)
  monkeypatch.setattr(jax, 'devices', lambda: [fake(0), fake(1)])
  assert schedule.models_per_call(tiny_config) == (5, jax.local_device_count())
