"""Writes a run's estimates in the paper's release layout, or compares a run
with released files (pairs, per-class influence, per-example scores).

The command of feldman_zhang/analysis/release.py, run from a checkout:
  python -m analysis.release --help
(installed: python -m feldman_zhang.analysis.release).
"""

from feldman_zhang.analysis import release

if __name__ == '__main__':
  release.run()
