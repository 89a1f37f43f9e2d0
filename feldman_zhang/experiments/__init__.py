"""The paper's two experiments on top of a finished estimate run.

drop:      for each threshold theta, retrain without the training examples of
           mem >= theta, and without as many random examples; memorized
           examples are needed if the first arm loses more test accuracy.
lastlayer: train a backbone on the full training set, freeze its features,
           and re-run the subset estimator training only a last layer; the
           representation, not the last layer, is where memorization happens.

Both write numbers under WORKDIR/<experiment>/ (csv, json, npz; the figures
are analysis.experiment_figures'), resume after an interruption (each
finished threshold, the backbone checkpoint and the heads' chunks are kept)
and log their progress.
"""

from feldman_zhang.experiments.drop import drop
from feldman_zhang.experiments.drop import drop_one
from feldman_zhang.experiments.drop import random_removal
from feldman_zhang.experiments.lastlayer import backbone
from feldman_zhang.experiments.lastlayer import compare_mem
from feldman_zhang.experiments.lastlayer import lastlayer
from feldman_zhang.experiments.lastlayer import make_head_config
