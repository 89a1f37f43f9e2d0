"""The benchmark harness: `python -m feldman_zhang.bench` (__main__.py);
the arms and counts in harness.py, the step layouts in steps.py."""
