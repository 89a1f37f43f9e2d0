"""Exports the high-influence train -> test pairs of a finished run.

The command of feldman_zhang/analysis/export_pairs.py, run from a checkout:
  python -m analysis.export_pairs --help
(installed: python -m feldman_zhang.analysis.export_pairs).
"""

from feldman_zhang.analysis import export_pairs

if __name__ == '__main__':
  export_pairs.run()
