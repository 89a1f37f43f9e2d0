"""How a trained model's parameters are held between SGD steps.

'float32': f32 parameters; with bf16 compute, every step first casts each
weight to bf16 in a pass of its own (read 4 bytes, write 2), because the cast
of step s+1 cannot fuse with the update of step s across the scan's loop.

'split': each f32 parameter is held as two 16-bit halves of its bit pattern,
`hi` (bf16, the parameter rounded to the nearest bf16) and `lo` (int16, the
rest). The model computes with `hi` directly, so the cast pass disappears; the
optimizer joins the halves into the exact f32 value, updates it in f32 and
splits it again, elementwise (one fusion where XLA's GPU multi-output fusion
merges the three outputs; the CPU compiler keeps three). The master weights are
bit-for-bit those of 'float32' storage given the same gradients; only the
rounding of the compute copy differs, ties going away from zero instead of to
even (1 value in 65,536). For the bandwidth-bound MNIST MLP step the byte
model (bench.bytes_per_param_step) goes from 26 to 20 bytes per parameter
and step (BENCHMARKS.md).

`compute_dtype` is the jnp dtype a resolved dtype name (train.compute_dtype,
train.momentum_dtype) computes or holds momentum in.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


def split_f32(w):
  """f32 array -> (hi bf16, lo int16) with join_f32(hi, lo) == w bitwise.

  hi's bits are w's top 16 bits rounded on the 17th: w rounded to nearest
  (ties away from zero), inf where w is within half a bf16 step of overflow.
  lo = bits - (hi << 16) lies in [-2**15, 2**15) by construction, so the
  round trip is exact for every bit pattern but NaNs, which all become the
  canonical quiet NaN: rounded as they are, NaNs with a high payload (the
  GPU's own 0x7FFFFFFF among them) would wrap to a hi of -0.0 or +0.0, and a
  diverged model would compute as if it were fine.
  """
  bits = lax.bitcast_convert_type(w, jnp.int32)
  bits = jnp.where(jnp.isnan(w), jnp.int32(0x7FC00000), bits)
  hi = (bits + 0x8000) >> 16  # arithmetic shift: keeps the sign half intact
  lo = bits - (hi << 16)
  return (lax.bitcast_convert_type(hi.astype(jnp.int16), jnp.bfloat16),
          lo.astype(jnp.int16))


def join_f32(hi, lo):
  """(hi bf16, lo int16) -> the f32 array split_f32 split."""
  hi_bits = lax.bitcast_convert_type(hi, jnp.int16).astype(jnp.int32)
  return lax.bitcast_convert_type((hi_bits << 16) + lo.astype(jnp.int32),
                                  jnp.float32)


class Storage(NamedTuple):
  """store: f32 params -> the carried form; view: carried -> the params the
  model computes with; master: carried -> the exact f32 params."""
  store: Callable
  view: Callable
  master: Callable


def _split_tree(params):
  """f32 params -> {'hi': bf16 tree, 'lo': int16 tree}."""
  leaves, treedef = jax.tree.flatten(params)
  if any(jnp.result_type(w) != jnp.float32 for w in leaves):
    raise ValueError('split storage holds float32 parameters only')
  hi, lo = zip(*map(split_f32, leaves)) if leaves else ((), ())
  return dict(hi=treedef.unflatten(hi), lo=treedef.unflatten(lo))


def _join_tree(stored):
  return jax.tree.map(join_f32, stored['hi'], stored['lo'])


def compute_dtype(name: str):
  """The jnp dtype of a resolved dtype field (resolve.resolve), used for
  matrix math and for the momentum buffer; parameters always stay f32."""
  return {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[name]


_IDENTITY = lambda x: x
STORAGES = ('float32', 'split')


def storage(name: str, compute_dtype) -> Storage:
  """The parameter storage `name` for models computing in compute_dtype."""
  if name == 'float32':
    return Storage(_IDENTITY, _IDENTITY, _IDENTITY)
  if name != 'split':
    raise ValueError(f'unknown param_storage {name!r}: expected '
                     f'{" or ".join(STORAGES)}')
  if jnp.dtype(compute_dtype) != jnp.bfloat16:
    # An f32 model would compute with weights rounded to bf16.
    raise ValueError('train.param_storage=split needs bf16 compute '
                     '(train.compute_dtype=bfloat16, or auto on a GPU/TPU)')
  return Storage(_split_tree, lambda stored: stored['hi'], _join_tree)
