"""Whether a config can work, and the config with every 'auto' made
concrete: `validate` checks each field against the choices of the module that
owns it (train, optimizer, augment, evaluation, precision, subsets);
`resolve` validates, then fixes what `auto` means on this backend and for
this data's size, once, at the job's entry (prepare.py).
"""

import jax
from absl import logging

from feldman_zhang import augment
from feldman_zhang import config as config_lib
from feldman_zhang import evaluation
from feldman_zhang import optimizer
from feldman_zhang import precision
from feldman_zhang import subsets
from feldman_zhang import train
from feldman_zhang import units
from feldman_zhang.errors import ConfigError


DTYPES = ('float32', 'bfloat16')
# estimate.infl=auto writes the dense matrix up to this size, and above it
# the top-AUTO_TOPK and pair form.
DENSE_INFL_BYTES = 2**30
AUTO_TOPK = 10
CONV_WEIGHT_GRADS = ('matmul', 'xla')


def validate(c) -> None:
  """Raises ConfigError on the first field that cannot work."""
  epochs = c.train.epochs
  if isinstance(epochs, bool) or not isinstance(epochs, (int, float)):
    raise ConfigError(f'train.epochs must be a number > 0 (got {epochs!r})')
  checks = [
      (c.num_models >= 1, 'num_models must be >= 1'),
      (0 < c.subset_ratio < 1, 'subset_ratio must lie in (0, 1)'),
      (all(0 < r < 1 for r in c.subset_ratios) and
       len(set(c.subset_ratios)) == len(c.subset_ratios),
       'subset_ratios must be distinct ratios in (0, 1)'),
      (not c.subset_ratios or any(abs(r - c.subset_ratio) < 1e-9
                                  for r in c.subset_ratios),
       'subset_ratios must hold subset_ratio (mem and infl are estimated '
       'there)'),
      (c.subset_stream >= 0, 'subset_stream must be >= 0'),
      _one_of(c.subset_design, 'subset_design', subsets.DESIGNS),
      (c.subset_design == 'random' or c.target_stderr == 0,
       'target_stderr must be 0 with subset_design=balanced (stopping early '
       'would unbalance it)'),
      (c.models_per_device >= 1, 'models_per_device must be >= 1'),
      (c.get('cpu_models_per_device', 0) >= 0,
       'cpu_models_per_device must be >= 0 (0: models_per_device)'),
      _one_of(c.vectorize, 'vectorize', train.VECTORIZE),
      (c.eval_batch_size >= 1, 'eval_batch_size must be >= 1'),
      (c.train.epochs > 0, 'train.epochs must be > 0'),
      (c.train.batch_size >= 1, 'train.batch_size must be >= 1'),
      (c.train.lr > 0, 'train.lr must be > 0'),
      (0 <= c.train.momentum < 1, 'train.momentum must lie in [0, 1)'),
      _one_of(c.train.schedule, 'train.schedule', optimizer.SCHEDULES),
      (0 <= c.train.warmup_epochs < c.train.epochs,
       'train.warmup_epochs must lie in [0, epochs)'),
      (0 <= c.train.label_smoothing < 1,
       'train.label_smoothing must lie in [0, 1)'),
      _one_of(c.train.augment, 'train.augment', augment.KINDS),
      _one_of(c.model.tta, 'model.tta', evaluation.TTA),
      _one_of(c.model.get('conv_weight_grad', config_lib.AUTO),
              'model.conv_weight_grad',
              (config_lib.AUTO, *CONV_WEIGHT_GRADS)),
      (0 <= c.train.lr_start and 0 <= c.train.lr_end,
       'train.lr_start and lr_end must be >= 0'),
      (c.train.bias_lr_scale > 0, 'train.bias_lr_scale must be > 0'),
      (0 <= c.train.whiten_bias_epochs <= c.train.epochs,
       'train.whiten_bias_epochs must lie in [0, epochs]'),
      (c.train.crop_padding >= 0, 'train.crop_padding must be >= 0'),
      _one_of(c.train.compute_dtype, 'train.compute_dtype',
              (config_lib.AUTO, *DTYPES)),
      _one_of(c.train.momentum_dtype, 'train.momentum_dtype',
              (config_lib.AUTO, *DTYPES)),
      _one_of(c.train.param_storage, 'train.param_storage',
              (config_lib.AUTO, *precision.STORAGES)),
      (0 <= c.data.label_noise < 1, 'data.label_noise must lie in [0, 1)'),
      (c.data.num_classes >= 0, 'data.num_classes must be >= 0'),
      # jax.random.key keeps 32 bits: seeds 2**32 apart would share models.
      (0 <= c.seed < 2**32, 'seed must lie in [0, 2**32)'),
      (c.target_stderr >= 0, 'target_stderr must be >= 0'),
      (c.estimate.infl in (config_lib.AUTO, True, False),
       'estimate.infl must be auto, True or False'),
      (c.estimate.infl_topk >= 0, 'estimate.infl_topk must be >= 0'),
      (c.estimate.margin in (True, False), 'estimate.margin must be True or False'),
      (c.summary.top_pairs >= 0, 'summary.top_pairs must be >= 0'),
      (len(c.drop.thresholds) >= 1, 'drop.thresholds must not be empty'),
      (c.drop.num_models >= 1, 'drop.num_models must be >= 1'),
      (c.drop.seed >= 0, 'drop.seed must be >= 0'),
      (c.lastlayer.epochs >= 1, 'lastlayer.epochs must be >= 1'),
      (c.lastlayer.batch_size >= 1, 'lastlayer.batch_size must be >= 1'),
      (c.lastlayer.lr > 0, 'lastlayer.lr must be > 0'),
      (c.lastlayer.models_per_device >= 1,
       'lastlayer.models_per_device must be >= 1'),
  ]
  for ok, message in checks:
    if not ok:
      raise ConfigError(f'{message} (got {_value(c, message.split()[0])})')


def _one_of(value, name: str, choices) -> tuple[bool, str]:
  """A check of validate: value is one of the owner's choices."""
  return (value in choices,
          f'{name} must be {", ".join(choices[:-1])} or {choices[-1]}')


def _value(c, dotted):
  for part in dotted.split('.'):
    c = c[part]
  return c
def resolve(c, backend: str | None = None, recorded: dict | None = None,
            sizes: tuple[int, int] | None = None):
  """A copy of config c, validated, with every 'auto' made concrete; c is
  not changed. ConfigError on the first field that cannot work. Resolving a
  resolved config again changes nothing but what `sizes` decides.

  backend: jax's platform name ('cpu', 'gpu', 'tpu'; default: jax's own).
  models_per_device: cpu_models_per_device on the CPU where that is set.
  compute_dtype and momentum_dtype: bfloat16 on accelerators, float32 on
  the CPU, which has no fast bf16 matrix unit. param_storage: 'split' where
  the compute is bf16 (no per-step cast pass, precision.py), 'float32'
  where it is f32 -- unless `recorded`, the identity config a workdir's
  stored models were trained with (identity.recorded_config), names a storage
  this run can use: 'auto' once meant float32 everywhere, and a run stored
  then on a GPU resumes with its own storage instead of being refused for
  one it never chose.
  sizes: (n, n_test) of the data; estimate.infl=auto stays 'auto' until
  they are given (`dense_infl`).
  """
  validate(c)
  backend = backend or jax.default_backend()
  accelerated = 'bfloat16' if backend != 'cpu' else 'float32'
  out = config_lib.copy(c)
  t = out.train
  for k in ('compute_dtype', 'momentum_dtype'):
    if t[k] == config_lib.AUTO:
      t[k] = accelerated
  if t.param_storage == config_lib.AUTO:
    default = 'split' if t.compute_dtype == 'bfloat16' else 'float32'
    kept = (recorded or {}).get('train.param_storage', default)
    if kept != default and (kept == 'float32' or
                            (kept == 'split' and t.compute_dtype == 'bfloat16')):
      logging.info('train.param_storage=auto keeps %s, the storage the '
                   'stored models were trained with', kept)
      default = kept
    t.param_storage = default
  if backend == 'cpu' and out.get('cpu_models_per_device', 0):
    if out.models_per_device != out.cpu_models_per_device:
      logging.info('models_per_device=%d on the CPU (cpu_models_per_device; '
                   '0 takes models_per_device=%d)', out.cpu_models_per_device,
                   out.models_per_device)
    out.models_per_device = out.cpu_models_per_device
  if out.model.get('conv_weight_grad', config_lib.AUTO) == config_lib.AUTO:
    with out.model.unlocked():
      out.model.conv_weight_grad = 'matmul' if backend == 'cpu' else 'xla'
  if t.param_storage == 'split' and t.compute_dtype != 'bfloat16':
    raise ConfigError('train.compute_dtype must be bfloat16 for '
                      'train.param_storage=split (auto is float32 on the CPU; '
                      f'got {c.train.compute_dtype})')
  if sizes and out.estimate.infl == config_lib.AUTO:
    out.estimate.infl = dense_infl(*sizes)
    if not out.estimate.infl:
      out.estimate.infl_topk = out.estimate.infl_topk or AUTO_TOPK
      logging.info(
          'estimate.infl=auto: the dense %s x %s influence matrix would '
          'take %s; writing the top-%d influence of each test example and '
          'the pairs instead (--config.estimate.infl=True writes it)',
          f'{sizes[0]:,}', f'{sizes[1]:,}',
          units.human_bytes(dense_bytes(*sizes)), out.estimate.infl_topk)
    else:
      logging.info('estimate.infl=auto: writing the dense %s x %s influence '
                   'matrix (%s)', f'{sizes[0]:,}', f'{sizes[1]:,}',
                   units.human_bytes(dense_bytes(*sizes)))
  return out


def dense_bytes(n: int, n_test: int) -> int:
  """The size of the dense (n, n_test) float32 influence file."""
  return 4 * n * n_test


def dense_infl(n: int, n_test: int) -> bool:
  """What estimate.infl=auto resolves to for n x n_test examples."""
  return dense_bytes(n, n_test) <= DENSE_INFL_BYTES
