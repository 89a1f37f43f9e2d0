"""The one loop: calls in order, outputs as a direct call gives them, stops."""

import dataclasses

import numpy as np
import pytest

from feldman_zhang import data
from feldman_zhang import prepare
from feldman_zhang import runner
from feldman_zhang import schedule


@pytest.fixture(scope='module')
def job():
  from conftest import make_tiny_config  # pylint: disable=g-import-not-at-top
  c = make_tiny_config()
  c.train.epochs = 2
  ds = data.load('digits')
  # A few hundred examples: the loop is under test, not the model.
  ds = dataclasses.replace(ds, x_train=ds.x_train[:200], y_train=ds.y_train[:200],
                           x_test=ds.x_test[:50], y_test=ds.y_test[:50])
  m = 140
  c.train.epochs = 1
  program = runner.Program(prepare.create_model(c, ds.num_classes), c, ds, m,
                           per_device=2)
  return c, ds, m, program


def _calls(c, ds, m, starts, size):
  return list(schedule.cell_calls(c, ds.num_train, m,
                                  [(s, None) for s in starts], size))


def test_the_sink_gets_every_call_in_order_as_a_direct_call_gives_it(job):
  c, ds, m, program = job
  calls = _calls(c, ds, m, [0, 2, 4], program.size)
  got = []
  compiled, ahead, stopped = runner.run(
      program, iter(calls), lambda tag, idx, out: got.append((tag, idx, out)),
      runner.Phases(), after_compile=lambda: 'ahead')
  assert not stopped and ahead.result() == 'ahead'
  assert [tag for tag, _, _ in got] == [0, 2, 4]
  for (tag, keys, idx), (_, got_idx, out) in zip(calls, got):
    np.testing.assert_array_equal(got_idx, idx)
    direct = program.dispatch(compiled, keys, idx)
    for k, v in direct.items():
      np.testing.assert_array_equal(out[k], np.asarray(v), err_msg=k)
    assert out['train_correct'].shape == (program.size, ds.num_train)


def test_a_sink_that_says_stop_ends_the_run_after_its_call(job):
  c, ds, m, program = job
  seen = []

  def sink(tag, idx, out):
    seen.append(tag)
    return tag == 2  # stop after the second call

  phases = runner.Phases()
  _, _, stopped = runner.run(program, iter(_calls(c, ds, m, [0, 2, 4, 6], 2)),
                             sink, phases)
  assert stopped and seen == [0, 2]
  assert {'compile', 'train', 'wait_for_device'} <= set(phases.seconds)


def test_train_rows_pads_whole_calls_and_drops_the_padding(job):
  c, ds, m, program = job
  keys, idx = schedule.model_inputs(c, ds.num_train, m, np.arange(5))
  out = runner.train_rows(program, keys, idx)
  assert out['loss'].shape[0] == 5
  # Row 4 trained in a call padded with copies of itself: as in any call.
  alone = runner.train_rows(program, keys[4:5], idx[4:5])
  for k in out:
    np.testing.assert_array_equal(out[k][4], alone[k][0], err_msg=k)


def test_phases_add_up_and_progress_counts():
  phases = runner.Phases()
  for _ in range(3):
    with phases('x'):
      pass
  assert set(phases.seconds) == {'x'} and phases.seconds['x'] >= 0
  progress = runner.Progress(10)
  progress.update(4)
  progress.update(6)
  assert progress.done == 10


def test_a_stop_request_hands_the_call_in_flight_then_raises(job):
  c, ds, m, program = job
  seen, asked = [], []

  def sink(tag, idx, out):
    seen.append(tag)
    if tag == 2 and not asked:  # as a signal handler would, while call 4
      asked.append(runner.request_stop(15))  # is in flight
    return False

  with pytest.raises(runner.Interrupted) as raised:
    runner.run(program, iter(_calls(c, ds, m, [0, 2, 4, 6, 8], 2)), sink,
               runner.Phases())
  assert raised.value.signum == 15 and asked[0].startswith('the calls')
  assert seen == [0, 2, 4]  # 4 was dispatched: it is handed, not lost
  assert runner.request_stop(15) is None  # no loop runs: nothing to wait for
  # The request ended with its run: the next run trains every call.
  seen.clear()
  runner.run(program, iter(_calls(c, ds, m, [0, 2], 2)), sink, runner.Phases())
  assert seen == [0, 2]
