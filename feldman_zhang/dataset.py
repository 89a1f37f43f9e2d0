"""The in-memory data set every source loads into (sources), checked and
given label noise by data.load / data.from_config."""

import dataclasses
import hashlib

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
  """x_*: (N, H, W, C) uint8; y_*: (N,) int32 in [0, num_classes)."""
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  # (N_train,) bool: training labels replaced by `data.with_label_noise`, if
  # any.
  corrupted: np.ndarray | None = None

  @property
  def num_train(self) -> int:
    return len(self.y_train)

  @property
  def num_test(self) -> int:
    return len(self.y_test)

  def fingerprint(self) -> str:
    """sha256 over all arrays: the data identity recorded with a run."""
    h = hashlib.sha256()
    for a in (self.x_train, self.y_train, self.x_test, self.y_test):
      h.update(str((a.shape, a.dtype.str)).encode())
      h.update(np.ascontiguousarray(a).tobytes())
    h.update(str(self.num_classes).encode())
    return h.hexdigest()
