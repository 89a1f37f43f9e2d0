"""Compares the stored predictions and estimates of two runs.

The command of feldman_zhang/analysis/compare_runs.py, run from a checkout:
  python -m analysis.compare_runs --help
(installed: python -m feldman_zhang.analysis.compare_runs).
"""

from feldman_zhang.analysis import compare_runs

if __name__ == '__main__':
  compare_runs.run()
