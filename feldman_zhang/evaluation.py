"""Evaluates a trained model on a whole data set: correctness, p of the true
label and each test-time view's margin, batch by batch on the device.
"""

import math

import jax
import jax.numpy as jnp

from feldman_zhang import models as models_lib


TTA = ('none', 'mirror', 'mirror_translate')  # test-time views: tta_views


def tta_views(x, tta: str):
  """The views test-time augmentation averages, and their weights.

  x: (B, H, W, C) -> ((V, B, H, W, C), (V,) weights summing to 1). airbench's
  levels: 'mirror' is the image and its mirror, 1/2 each;
  'mirror_translate' gives those 1/4 each and 1/8 to each of the mirrored
  and plain images shifted one pixel up-left and down-right (reflect
  padding).
  """
  if tta == 'none':
    return x[None], jnp.ones(1)
  views = [x, x[:, :, ::-1]]
  if tta == 'mirror':
    return jnp.stack(views), jnp.full(2, 0.5)
  h, w = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
  for shifted in (padded[:, :h, :w], padded[:, 2:, 2:]):
    views += [shifted, shifted[:, :, ::-1]]
  return jnp.stack(views), jnp.array([0.25, 0.25] + [0.125] * 4)


def margin(logits, y):
  """The margin, or scaled log-odds, of the true class: phi = logit_y -
  logsumexp_{y' != y} logit_y' = log p_y - log(1 - p_y), in float32.

  logits: (..., C); y: (...) int -> (...) float32. Computed from the logits,
  never from p: a float16 p saturates at phi ~ 7.6, and even a float32 p at
  ~ 17, where the examples LiRA and the datamodels separate live.
  """
  logits = logits.astype(jnp.float32)
  true = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
  is_true = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
  return true - jax.nn.logsumexp(jnp.where(is_true, -jnp.inf, logits), -1)


def num_views(tta: str) -> int:
  """V, the views tta_views gives (the margins stored per example)."""
  return {'none': 1, 'mirror': 2, 'mirror_translate': 6}[tta]


def make_evaluate(model, batch_size: int, tta: str = 'none'):
  """Returns evaluate((params, state), x, y) -> (correct (N,) bool,
  p_true (N,) f32, margins (N, V) f32): correctness and p of the argmax of
  the logits averaged over `tta`'s views (the classifier whose correctness
  mem and infl count), and each view's own margin (`margin`: what LiRA and
  the datamodels score; V = num_views(tta))."""

  def logits_of(params, state, xb):
    """(averaged logits (B, C), per-view logits (V, B, C) float32)."""
    if tta == 'none':
      logits = models_lib.apply(model, params, state, xb, train=False)[0]
      return logits, logits.astype(jnp.float32)[None]
    views, weights = tta_views(xb, tta)
    v, b = views.shape[:2]
    logits, _ = models_lib.apply(model, params, state,
                                 views.reshape(v * b, *xb.shape[1:]),
                                 train=False)
    logits = logits.astype(jnp.float32).reshape(v, b, -1)
    return jnp.einsum('v,vbc->bc', weights, logits), logits

  def evaluate(variables, x, y):
    params, state = variables
    n = x.shape[0]
    nb = math.ceil(n / batch_size)
    pad = nb * batch_size - n
    xp = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    yp = jnp.pad(y, (0, pad))

    def one_batch(batch):
      xb, yb = batch
      logits, views = logits_of(params, state, xb)
      p = jax.nn.softmax(logits.astype(jnp.float32))
      p_true = jnp.take_along_axis(p, yb[:, None], axis=1)[:, 0]
      margins = margin(views, jnp.broadcast_to(yb, views.shape[:2])).T
      return jnp.argmax(logits, -1) == yb, p_true, margins

    correct, p_true, margins = jax.lax.map(
        one_batch, (xp.reshape(nb, batch_size, *x.shape[1:]),
                    yp.reshape(nb, batch_size)))
    return (correct.reshape(-1)[:n], p_true.reshape(-1)[:n],
            margins.reshape(nb * batch_size, -1)[:n])

  return evaluate
