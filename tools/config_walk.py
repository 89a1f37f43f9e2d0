r"""The way the config travels through one job: which functions receive it.

  python tools/config_walk.py [WORKDIR]

Runs a small default job (digits, 16 models, 2 epochs) from pipeline.run
under a profiler hook and records every call of a feldman_zhang function
that takes a config (an ml_collections ConfigDict) as an argument. Prints:
- stops: distinct such functions, in order of first call, with modules;
- modules: distinct modules among them;
- revisits: moves from one stop's module to a different module that an
  earlier stop already left (the reader goes back to a file already read);
- depth: the deepest nesting of config-taking calls.
The structure issue (25) measured a walk like this by hand; this is the same
question asked by the interpreter, so that two trees can be compared with one
method (run it inside each tree).
"""

import collections
import contextlib
import json
import os
import sys
import tempfile

import ml_collections

from feldman_zhang import config as config_lib
from feldman_zhang import pipeline

_PACKAGE = os.path.dirname(config_lib.__file__)


def _takes_config(frame) -> bool:
  code = frame.f_code
  names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
  return any(isinstance(frame.f_locals.get(a), ml_collections.ConfigDict)
             for a in names)


def walk(workdir: str) -> dict:
  c = config_lib.from_file('configs/digits_mlp.py')
  c.num_models, c.models_per_device, c.train.epochs = 16, 8, 2
  stops, depth, stack = collections.OrderedDict(), [0], []

  def hook(frame, event, _):
    if not frame.f_code.co_filename.startswith(_PACKAGE):
      return
    if event == 'call' and _takes_config(frame):
      module = os.path.relpath(frame.f_code.co_filename, _PACKAGE)
      stops.setdefault(f'{module}:{frame.f_code.co_name}', module)
      stack.append(frame)
      depth[0] = max(depth[0], len(stack))
    elif event == 'return' and stack and stack[-1] is frame:
      stack.pop()

  sys.setprofile(hook)
  try:
    with contextlib.redirect_stdout(sys.stderr):  # the job's own summary
      pipeline.run(c, workdir)
  finally:
    sys.setprofile(None)
  modules = list(stops.values())
  left, revisits, previous = set(), 0, None
  for mod in modules:
    if previous is not None and mod != previous:
      left.add(previous)
      revisits += mod in left
    previous = mod
  return dict(stops=len(stops), modules=len(set(modules)), revisits=revisits,
              depth=depth[0], walk=list(stops))


if __name__ == '__main__':
  with tempfile.TemporaryDirectory() as tmp:
    out = walk(sys.argv[1] if len(sys.argv) > 1 else os.path.join(tmp, 'w'))
  print(json.dumps(out, indent=1))
