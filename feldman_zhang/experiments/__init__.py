"""The paper's two experiments on top of a finished estimate run.

drop:      for each threshold theta, retrain without the training examples of
           mem >= theta, and without as many random examples; memorized
           examples are needed if the first arm loses more test accuracy.
lastlayer: train a backbone on the full training set, freeze its features,
           and re-run the subset estimator training only a last layer; the
           representation, not the last layer, is where memorization happens.

drop.drop and lastlayer.lastlayer write numbers under WORKDIR/<experiment>/
(csv, json, npz; the figures are analysis.experiment_figures'), resume
after an interruption (each finished threshold, the backbone checkpoint and
the heads' chunks are kept) and log their progress.
"""
