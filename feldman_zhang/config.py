"""The base experiment config and the part that fixes results.

Files in configs/ start from `base()` and change what their experiment needs;
every field can be overridden on the command line (--config.num_models=64).
Its checks and the resolution of 'auto' are resolve.py's.
"""

import importlib.util
import os

import ml_collections


# The one value resolved per backend. `resolve.resolve` is the only place
# that reads it: everything downstream of the job's entry sees concrete names.
AUTO = 'auto'


# Fields that may differ when a run is resumed: they change how much is done
# or how it is scheduled, not what any one model computes. (Models per device
# changes the shapes XLA compiles for, which may reorder float sums; the
# measured effect is in BENCHMARKS.md.)
SCHEDULING_FIELDS = ('num_models', 'models_per_device',
                     'cpu_models_per_device', 'vectorize',
                     'subset_ratios',
                     'eval_batch_size', 'target_stderr',
                     'estimate', 'summary', 'drop', 'lastlayer')
# How a result is computed, not what: fields that may reorder float sums
# but change no formula (like models_per_device). Not part of the identity.
IMPLEMENTATION_FIELDS = ('model.conv_weight_grad',)
# Where the data is read from: the run records the data's own fingerprint
# instead, so a moved or re-prepared copy of the same data resumes.
LOCATION_FIELDS = ('data.source', 'data.data_dir', 'data.download')


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_models = 1000          # t, the number of subsets and models.
  c.subset_ratio = 0.7         # m = round(subset_ratio * n), as in the paper.
  # C-scores (ratios.py): num_models models at each of these ratios too, and
  # per example the mean held-out accuracy over them; subset_ratio must be
  # one of them. () trains subset_ratio alone.
  c.subset_ratios = ()
  # random (the paper's) | balanced: every example in the same number of
  # subsets, round(subset_ratio x num_models) (within one where m t / n is
  # not whole; subsets.balanced). The design depends on num_models, so a
  # balanced run is not extended: a new num_models is a new run.
  c.subset_design = 'random'
  # Which draw of subsets and keys: 0, a run's own; the job gives each of
  # subset_ratios' other ratios a stream of its own (not set by hand).
  c.subset_stream = 0
  c.models_per_device = 100    # K, models trained by one jitted call.
  # > 0: K on the CPU instead (resolve.resolve). An accelerator's best K is
  # in the hundreds; a CPU's, for the MNIST MLP, about 8 (BENCHMARKS.md:
  # "Models per call on the CPU"), and a call of 1,000 CPU models shows no
  # progress for half an hour.
  c.cpu_models_per_device = 0
  # How a call runs its K models: vmap (one batched program; dense layers
  # become batched matmuls) or map (lax.map, one model after another inside
  # the call; convolutions stay plain rather than grouped, faster for
  # ResNet-9 on GPUs, BENCHMARKS.md).
  c.vectorize = 'vmap'
  c.eval_batch_size = 1024
  # > 0: stop training once the median standard error of mem falls below it
  # (checked after each call); the estimates then use the models trained.
  c.target_stderr = 0.0

  c.data = ml_collections.ConfigDict()
  c.data.source = 'digits'     # digits | idx:<dir> | npz:<file> | tfds:<name>
  c.data.data_dir = ''         # tfds only; '' is TFDS's default.
  c.data.download = False      # tfds only: download and prepare if missing.
  c.data.num_classes = 0       # 0: the data set's own count.
  c.data.label_noise = 0.0     # Fraction of training labels replaced, seeded.

  c.model = ml_collections.ConfigDict()
  c.model.name = 'mlp'
  c.model.hidden = (512, 256)
  c.model.kernel_init = 'lecun_normal'  # mlp: or glorot_normal (as stax)
  # Test-time augmentation: none | mirror | mirror_translate (airbench's
  # levels). The correctness mem and infl count is that of the averaged
  # prediction, so it is part of the run's identity.
  c.model.tta = 'none'
  # How the 3x3 convolutions (airbench, cnn, resnet9) take their gradients
  # inside the training loop: matmul (airbench.conv_same_loop: XLA's CPU
  # backend runs the gradient convolutions 10-40x slower inside a loop) or
  # xla (its own, for GPUs and TPUs). auto: matmul on the CPU. Same values
  # up to float summation order.
  c.model.conv_weight_grad = AUTO

  c.train = ml_collections.ConfigDict()
  # Passes over the subset; a fraction stops the last one early (airbench
  # trains 9.9). (Typed object: it holds an int or a float, and the
  # command line's --config.train.epochs=9.9 parses as a float.)
  c.train.epochs = ml_collections.FieldReference(10, field_type=object)
  c.train.batch_size = 128
  c.train.lr = 0.1
  c.train.momentum = 0.9
  c.train.nesterov = False
  c.train.weight_decay = 0.0
  c.train.schedule = 'constant'  # constant | cosine | linear (to zero)
  c.train.warmup_epochs = 0.0    # cosine and linear: ramp up from zero.
  c.train.label_smoothing = 0.0
  c.train.augment = 'none'       # none | crop_flip, drawn per model and step.
  c.train.crop_padding = 4
  # linear schedule: from lr_start x lr up to lr, then down to lr_end x lr.
  c.train.lr_start = 0.0
  c.train.lr_end = 0.0
  # airbench's groups: BatchNorm biases at lr x bias_lr_scale (weight decay
  # / bias_lr_scale), a whitening bias trained for whiten_bias_epochs only.
  c.train.bias_lr_scale = 1.0
  c.train.whiten_bias_epochs = 0
  c.train.lookahead = False      # airbench's weight averaging
  # Drop each epoch's last, partial batch (airbench's loader) instead of
  # padding it with zero-weight repeats.
  c.train.drop_last = False
  c.train.compute_dtype = AUTO  # auto (bf16 on GPU/TPU) | float32 | bfloat16
  # Momentum buffer: bfloat16 halves its share of the parameter traffic that
  # bounds small-model training: faster MNIST MLP steps at the same accuracy
  # (BENCHMARKS.md). auto: bf16 on GPU/TPU, f32 on the CPU.
  c.train.momentum_dtype = AUTO
  # auto | float32 | split: with bf16 compute, 'split' holds each f32
  # parameter as a bf16 half the model computes with and an int16 rest
  # (precision.py), dropping the per-step cast pass: 26 -> 20 bytes per
  # parameter and step for the MNIST MLP, and faster training at the same
  # test accuracy (BENCHMARKS.md). Same master weights. auto:
  # split where the compute is bf16, float32 where it is f32.
  c.train.param_storage = AUTO

  c.estimate = ml_collections.ConfigDict()
  # The dense influence matrix infl (n, n_test) float32: True | False |
  # auto: dense where it takes at most resolve.DENSE_INFL_BYTES (digits:
  # 2.7 MB), else the top-k and pair form below (k = resolve.AUTO_TOPK unless
  # infl_topk says otherwise): MNIST's would be 2.4 GB, CIFAR's 2.0 GB, and
  # with t small a matrix of noise. Resolved once the data's sizes are known
  # (`resolve.resolve`).
  # (Typed object: the field holds 'auto' or a bool, and the command line's
  # --config.estimate.infl=True parses as a bool.)
  c.estimate.infl = ml_collections.FieldReference(AUTO, field_type=object)
  c.estimate.infl_stderr = False
  # The estimates on the margin too (margins.py): mem_margin (n,) always,
  # infl_margin (n, n_test) float32 where infl is dense. Runs whose chunks
  # hold no margins (format 1) skip them.
  c.estimate.margin = True
  # > 0: the top-k influence of each test example, computed tile by tile
  # without the full matrix (for runs where n x n_test does not fit; set
  # infl = False there), and every pair with infl >= pair_threshold (at most
  # a million, the largest) whose training example has mem >=
  # pair_mem_threshold (the paper's pairs: infl >= 0.15, mem >= 0.25).
  # 0: no top-k form.
  c.estimate.infl_topk = 0
  c.estimate.pair_threshold = 0.15
  c.estimate.pair_mem_threshold = 0.25

  # --mode=drop: retrain without the examples of mem >= each threshold, and
  # without as many random ones; num_models models per arm and threshold.
  c.drop = ml_collections.ConfigDict()
  c.drop.thresholds = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
  c.drop.num_models = 8
  c.drop.seed = 0

  # --mode=lastlayer: heads on the frozen features of a backbone trained on
  # the full training set, on the estimate's own subsets.
  c.lastlayer = ml_collections.ConfigDict()
  c.lastlayer.epochs = 20
  c.lastlayer.batch_size = 128
  c.lastlayer.lr = 0.05
  c.lastlayer.models_per_device = 1000

  c.summary = ml_collections.ConfigDict()
  c.summary.mem_threshold = 0.25  # The paper's bar for "memorized".
  c.summary.top_pairs = 5
  return c


def from_file(path: str, arg: str = '') -> ml_collections.ConfigDict:
  """get_config() of a config file, as --config=path[:arg] would load it."""
  spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def sibling(config_file: str, name: str) -> ml_collections.ConfigDict:
  """Another config of the same folder: configs build on each other."""
  return from_file(os.path.join(os.path.dirname(config_file), name + '.py'))


def copy(c) -> ml_collections.ConfigDict:
  """A copy of config c that can be changed as base()'s own: a plain copy
  types OBJECT_FIELDS by their values (estimate.infl 'auto' a str, then
  refusing a bool; train.epochs 10 an int, then refusing 9.9)."""
  if isinstance(c, ml_collections.FrozenConfigDict):
    c = c.as_configdict()
  out = c.copy_and_resolve_references()
  for dotted in OBJECT_FIELDS:
    group, name = dotted.split('.')
    with out[group].ignore_type():
      out[group][name] = ml_collections.FieldReference(out[group][name],
                                                       field_type=object)
  return out


# Fields base() types as object, to hold values of more than one type.
OBJECT_FIELDS = ('estimate.infl', 'train.epochs')


def from_record(recorded: dict) -> dict:
  """A run's recorded config (config.json, the estimates' config_json) over
  base()'s values: the fields a run predates read as base() has them, so
  readers index it without .get defaults that repeat base()."""
  def merge(defaults, rec):
    out = {k: merge(v, rec.get(k, {})) if isinstance(v, dict) else
           rec.get(k, v) for k, v in defaults.items()}
    return {**rec, **out}
  return merge(base().to_dict(), recorded)


def flatten(d, prefix=''):
  """Nested dict -> {'a.b': value}."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = list(v) if isinstance(v, tuple) else v
  return out


def training_fields(d: dict) -> dict:
  """The flattened fields of config dict d that change what a model trained
  by it computes: all but the scheduling and implementation fields (where
  its data lies included)."""
  return {k: v for k, v in flatten(d).items()
          if k.split('.')[0] not in SCHEDULING_FIELDS and
          k not in IMPLEMENTATION_FIELDS}


def result_fields(c) -> dict:
  """The flattened fields that change what the stored models compute (the
  run records its data's fingerprint instead of where the data lies)."""
  return {k: v for k, v in training_fields(c.to_dict()).items()
          if k not in LOCATION_FIELDS}
