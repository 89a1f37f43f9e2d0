"""Every random stream of a run, in one table.

A model, a subset or a host-side draw is a function of the seed and one tag
below, so no two draws share randomness and a resumed or re-scheduled run
draws the same numbers (tests/test_schedule.py checks the tags are
disjoint). Changing a value changes results: it is part of the trainer's
version (identity.TRAINER_VERSION).
"""

# -- model keys: train.model_keys folds MODEL_KEY_OFFSET + stream into
# key(seed), then the model id; stream 0 is key(seed) itself.
MODEL_KEY_OFFSET = 0xFFFF0000
ESTIMATE = 0      # the estimate's models
DROP = 1          # --mode=drop's retrained models
BACKBONE = 2      # --mode=lastlayer's full-data backbone
# Runs of config.subset_stream s > 0 (the C-score's other ratios): 16 + s,
# clear of the experiments' streams.
SUBSET_KEYS = 16

# -- host-side draws: np.random.SeedSequence([seed, TAG, ...]).
SUBSETS = 0x5B5E7       # subsets.indices: a model's random subset
BALANCED = 0xBA1A       # subsets.balanced: the whole balanced design
LABEL_NOISE = 0x401533  # data.with_label_noise
DROP_RANDOM = 0xD809    # drop's random-removal arm

# -- folded into one model's own key, beyond train.split_model_key's three
# (so models of configs without the feature keep their keys).
FLIP = 0x0F11B          # airbench's alternating flip

# config.subset_stream of a C-score ratio r: 1 + r in units of 1e-4 (0 is
# the plain run's stream), so a ratio keeps its stream whatever
# subset_ratios holds.
RATIO_RESOLUTION = 10_000


def model_key_stream(subset_stream: int) -> int:
  """The model-key stream of a run of config.subset_stream."""
  return SUBSET_KEYS + subset_stream if subset_stream else ESTIMATE


def ratio_stream(ratio: float) -> int:
  """config.subset_stream of C-score ratio `ratio`'s own run."""
  return 1 + int(round(ratio * RATIO_RESOLUTION))
