"""Figures of a finished run's memorization estimates.

The command of feldman_zhang/analysis/galleries.py, run from a checkout:
  python -m analysis.galleries --help
(installed: python -m feldman_zhang.analysis.galleries).
"""

from feldman_zhang.analysis import galleries

if __name__ == '__main__':
  galleries.run()
