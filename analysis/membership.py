"""LiRA membership inference against a finished run's models.

The command of feldman_zhang/analysis/membership.py, run from a checkout:
  python -m analysis.membership --help
(installed: python -m feldman_zhang.analysis.membership).
"""

from feldman_zhang.analysis import membership

if __name__ == '__main__':
  membership.run()
