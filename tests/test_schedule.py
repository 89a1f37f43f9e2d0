"""The cell grid, each call's models, and the table of random streams."""

import jax
import numpy as np
import pytest

from feldman_zhang import config as config_lib
from feldman_zhang import schedule
from feldman_zhang import streams
from feldman_zhang import subsets


def test_cells_sit_on_a_fixed_grid_dealt_round_robin():
  have = np.zeros(10, bool)
  have[[0, 1, 5]] = True
  cells = schedule.plan_cells(have, 4)
  assert [s for s, _ in cells] == [0, 4, 8]
  np.testing.assert_array_equal(cells[0][1], [2, 3])
  np.testing.assert_array_equal(cells[1][1], [4, 6, 7])
  np.testing.assert_array_equal(cells[2][1], [8, 9])
  # Two processes take alternate cells; together they cover every cell once.
  mine = [schedule.plan_cells(have, 4, p, 2) for p in (0, 1)]
  assert [s for s, _ in mine[0]] == [0, 8] and [s for s, _ in mine[1]] == [4]
  # A full cell is not planned; nothing missing, nothing planned.
  have[8:] = True
  assert [s for s, _ in schedule.plan_cells(have, 4)] == [0, 4]
  assert schedule.plan_cells(np.ones(7, bool), 3) == []


def test_consecutive_runs():
  runs = schedule.consecutive_runs(np.array([2, 3, 4, 7, 9, 10]))
  assert [r.tolist() for r in runs] == [[2, 3, 4], [7], [9, 10]]


def _config(**kw):
  c = config_lib.base()
  c.update(kw)
  return c


def test_a_models_inputs_depend_on_its_id_alone():
  c = _config(seed=3)
  keys, idx = schedule.model_inputs(c, 50, 20, np.arange(8))
  k2, i2 = schedule.model_inputs(c, 50, 20, np.array([5, 6]))
  np.testing.assert_array_equal(idx[5:7], i2)
  np.testing.assert_array_equal(jax.random.key_data(keys[5:7]),
                                jax.random.key_data(k2))
  np.testing.assert_array_equal(idx, subsets.indices(3, 50, 20, np.arange(8)))
  assert idx.dtype == np.int32 and idx.shape == (8, 20)


def test_a_subset_stream_draws_other_models_and_keys():
  base = _config(seed=0)
  other = _config(seed=0, subset_stream=streams.ratio_stream(0.5))
  k0, i0 = schedule.model_inputs(base, 50, 20, np.arange(4))
  k1, i1 = schedule.model_inputs(other, 50, 20, np.arange(4))
  assert not np.array_equal(i0, i1)
  assert not np.array_equal(jax.random.key_data(k0), jax.random.key_data(k1))


def test_cell_calls_are_whole_cells_padded_past_t():
  c = _config(num_models=5)
  calls = list(schedule.cell_calls(c, 50, 20, [(0, np.arange(4)),
                                               (4, np.array([4]))], 4))
  assert [start for start, _, _ in calls] == [0, 4]
  assert all(idx.shape == (4, 20) for _, _, idx in calls)
  # The padding (ids 5..7) is drawn like any model: the same program shape.
  np.testing.assert_array_equal(calls[1][2],
                                subsets.indices(0, 50, 20, np.arange(4, 8)))


def test_models_per_call_never_exceeds_t():
  assert schedule.models_per_call(_config(num_models=3,
                                          models_per_device=100))[0] == 3


def test_the_random_streams_are_disjoint():
  model_streams = {streams.ESTIMATE, streams.DROP, streams.BACKBONE}
  assert len(model_streams) == 3
  # Every ratio's run (subset_stream 1 + 1e4 r) keys clear of the above.
  ratio_keys = {streams.model_key_stream(streams.ratio_stream(r / 1e4))
                for r in range(1, 10_000)}
  assert len(ratio_keys) == 9_999 and not ratio_keys & model_streams
  assert streams.model_key_stream(0) == streams.ESTIMATE
  host = [streams.SUBSETS, streams.BALANCED, streams.LABEL_NOISE,
          streams.DROP_RANDOM]
  assert len(set(host)) == len(host)
  # Folded into a model's own key after split_model_key's three (0, 1, 2).
  assert streams.FLIP > 2
  # The model-key offset keeps every stream apart from a model id (< 2**31).
  assert streams.MODEL_KEY_OFFSET + max(ratio_keys) < 2**32
  assert streams.MODEL_KEY_OFFSET > 2**31


@pytest.mark.parametrize('ratio', [0.1, 0.5, 0.7, 0.9999])
def test_a_ratio_keeps_its_stream(ratio):
  assert streams.ratio_stream(ratio) == 1 + round(ratio * 10_000)
