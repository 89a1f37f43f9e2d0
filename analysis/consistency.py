"""How consistently runs on the same data find the same memorized examples

The command of feldman_zhang/analysis/consistency.py, run from a checkout:
  python -m analysis.consistency --help
(installed: python -m feldman_zhang.analysis.consistency).
"""

from feldman_zhang.analysis import consistency

if __name__ == '__main__':
  consistency.run()
