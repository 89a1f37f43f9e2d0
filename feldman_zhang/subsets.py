"""Random training subsets, one per model.

Model k's subset depends only on (seed, n, m, k): never on how models are
grouped into chunks, devices or hosts, so a run can be split, resumed or
extended without changing any subset.
"""

import numpy as np


def subset_size(n: int, ratio: float) -> int:
  """m = round(ratio * n), the size of every subset."""
  return int(round(ratio * n))


def indices(seed: int, n: int, m: int, model_ids, stream: int = 0
            ) -> np.ndarray:
  """Sorted training indices of each model's subset.

  Args:
    seed: the run's seed.
    n: number of training examples.
    m: subset size, 0 < m <= n.
    model_ids: (K,) int, global model indices.
    stream: 0, or another draw of subsets for the same (seed, k)
      (config.subset_stream).
  Returns:
    (K, m) int32, each row m distinct indices in increasing order.
  """
  if not 0 < m <= n:
    raise ValueError(f'subset size m={m} must lie in (0, n={n}]')
  ids = np.asarray(model_ids, np.int64).reshape(-1)
  out = np.empty((len(ids), m), np.int32)
  member = np.empty(n, bool)
  for row, k in enumerate(ids):
    # SeedSequence mixes (seed, k) into independent streams; PCG64's stream
    # is fixed for a given seed on every platform.
    entropy = [int(seed), 0x5B5E7, int(k)] + ([int(stream)] if stream else [])
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        entropy)))
    # The first m of a permutation, in increasing order: read off a mask
    # rather than sorted, and written in place (5x faster for 2,000 MNIST
    # subsets than sorting and stacking int64 rows).
    member[:] = False
    member[rng.permutation(n)[:m]] = True
    out[row] = np.flatnonzero(member)
  return out


def masks(seed: int, n: int, m: int, model_ids) -> np.ndarray:
  """(K, n) bool: masks[k, i] is whether example i is in model k's subset."""
  return to_masks(indices(seed, n, m, model_ids), n)


def to_masks(idx: np.ndarray, n: int) -> np.ndarray:
  """(K, m) indices -> (K, n) bool masks."""
  out = np.zeros((len(idx), n), bool)
  np.put_along_axis(out, idx, True, axis=1)
  return out
