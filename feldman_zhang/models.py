"""Flax models, looked up by `config.model.name`.

Every model maps uint8 images (B, H, W, C) to logits (B, num_classes) and
splits into `features` (the representation) and `head` (the last layer), so
the last-layer experiment can train heads on frozen features. Models hold no
mutable state, so `jax.vmap` over stacked parameters trains many at once.
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


def preprocess(x):
  """uint8 (B, H, W, C) -> float32 in [0, 1], the reference setup's scaling."""
  return x.astype(jnp.float32) / 255.0


class MLP(nn.Module):
  """ReLU MLP on flattened pixels; the reference MNIST model is (512, 256)."""
  hidden: Sequence[int]
  num_classes: int

  def setup(self):
    self.layers = [nn.Dense(h) for h in self.hidden]
    self.head = nn.Dense(self.num_classes)

  def features(self, x):
    """(B, H, W, C) uint8 -> (B, hidden[-1]) float32."""
    h = preprocess(x).reshape(x.shape[0], -1)
    for layer in self.layers:
      h = nn.relu(layer(h))
    return h

  def __call__(self, x):
    return self.head(self.features(x))


def create(config, num_classes: int) -> nn.Module:
  """The model named by config.name, with config's hyperparameters."""
  if config.name == 'mlp':
    return MLP(hidden=tuple(config.hidden), num_classes=num_classes)
  raise ValueError(f'unknown model {config.name!r}: expected one of mlp')
