"""Figures of the drop and lastlayer experiments of a finished run.

The command of feldman_zhang/analysis/experiment_figures.py, run from a checkout:
  python -m analysis.experiment_figures --help
(installed: python -m feldman_zhang.analysis.experiment_figures).
"""

from feldman_zhang.analysis import experiment_figures

if __name__ == '__main__':
  experiment_figures.run()
