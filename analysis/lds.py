"""The linear datamodeling score of one run's influence on another's models.

The command of feldman_zhang/analysis/lds.py, run from a checkout:
  python -m analysis.lds --help
(installed: python -m feldman_zhang.analysis.lds).
"""

from feldman_zhang.analysis import lds

if __name__ == '__main__':
  lds.run()
