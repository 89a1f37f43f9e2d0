"""One self-contained HTML page per finished run.

The command of feldman_zhang/analysis/report.py, run from a checkout:
  python -m analysis.report --help
(installed: python -m feldman_zhang.analysis.report).
"""

from feldman_zhang.analysis import report

if __name__ == '__main__':
  report.run()
