"""The bits a refactor must keep: sha256 of what five reference runs write.

  python tools/golden.py OUT_DIR  ->  prints {run/file[:member]: sha256}
  python tools/golden.py --hash OUT_DIR  ->  the same of runs already there

The runs: the README's default job (digits), the tests' planted config, a
2-process run, and `--mode=drop` and `--mode=lastlayer` on a small digits
run. Compare the JSON before and after a change (same machine, same jax):
every hash must be equal. An npz is hashed member by member (a member's
bytes, shape and dtype), so a member added by a change shows as one new key
while every array it kept is compared bit for bit. Not a test: the figures are hardware- and
version-specific, and the runs take minutes on 2 cores.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ['--config=configs/digits_mlp.py', '--config.model.hidden=(32,)',
         '--config.train.epochs=4', '--config.models_per_device=4',
         '--config.num_models=16', '--compilation_cache=']


def _main(*flags):
  return [sys.executable, '-m', 'feldman_zhang.main', *flags]


def _check(cmd):
  subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)


def _sha(path):
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def _planted(out):
  # Run in OUT with a relative data path: the estimates record the config,
  # and with it the path, which must not depend on OUT.
  code = (f'import sys; sys.path[:0] = ["{ROOT}", "{ROOT}/tests"]; '
          'import planted; '
          'from feldman_zhang import config, pipeline; '
          'planted.make("planted.npz"); '
          'c = planted.config("planted.npz"); '
          # The base's dtype fields, whatever the tests' config sets.
          'c.train.update({k: config.base().train[k] for k in '
          '("compute_dtype", "momentum_dtype", "param_storage")}); '
          'pipeline.run(c, "planted")')
  subprocess.run([sys.executable, '-c', code], cwd=out, check=True,
                 capture_output=True)


def _two_processes(out):
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen(
      _main(f'--workdir={out}/two', *SMALL,
            f'--coordinator_address=localhost:{port}', '--num_processes=2',
            f'--process_id={i}'), cwd=ROOT, stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL) for i in range(2)]
  assert [p.wait(timeout=900) for p in procs] == [0, 0]


def main(out):
  out = os.path.abspath(out)
  os.makedirs(out, exist_ok=True)
  _check(_main('--config=configs/digits_mlp.py', f'--workdir={out}/digits',
               '--compilation_cache='))
  _planted(out)
  _two_processes(out)
  _check(_main(f'--workdir={out}/small', *SMALL))
  _check(_main(f'--workdir={out}/small', *SMALL, '--mode=drop',
               '--config.drop.num_models=2', '--config.drop.thresholds=(0.5,0.2)'))
  _check(_main(f'--workdir={out}/small', *SMALL, '--mode=lastlayer',
               '--config.lastlayer.epochs=2'))
  print(json.dumps(hashes(out), indent=1, sort_keys=True))


def _members(path):
  """{member: sha256} of an npz's arrays."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  out = {}
  with np.load(path, allow_pickle=False) as f:
    for k in f.files:
      a = np.ascontiguousarray(f[k])
      h = hashlib.sha256(f'{a.shape}{a.dtype.str}'.encode())
      h.update(a.tobytes())
      out[k] = h.hexdigest()
  return out


def hashes(out) -> dict:
  """{run/file or run/file:member: sha256} of the files a refactor keeps."""
  result = {}
  for run in ('digits', 'planted', 'two', 'small'):
    for top, _, files in sorted(os.walk(os.path.join(out, run))):
      for f in sorted(files):
        path = os.path.join(top, f)
        rel = os.path.relpath(path, out)
        keep = (f == 'estimates.npz' or f.startswith('infl') or
                f.endswith('.csv') or f.startswith('theta_') or
                f == 'comparison.json')
        if not keep or '/chunks/' in path:
          continue
        if f.endswith('.npz'):
          result.update({f'{rel}:{k}': v for k, v in _members(path).items()})
        else:
          result[rel] = _sha(path)
  return result


if __name__ == '__main__':
  if sys.argv[1] == '--hash':
    print(json.dumps(hashes(os.path.abspath(sys.argv[2])), indent=1,
                     sort_keys=True))
  else:
    main(sys.argv[1])
