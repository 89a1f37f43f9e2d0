"""A small fault-injection campaign on the digits job (issue 17's, reduced).

  python tests/fault_campaign.py OUT_DIR [KILLS]

1. SIGKILL at random times (KILLS trials, t = 48, K = 8), then a resume:
   every resumed run must be bit-identical to an uninterrupted one, and no
   model may be stored twice.
2. Two processes on one workdir: exactly one trains, the other is refused in
   one line.
3. Each file of a finished run corrupted in turn: the job or the report says
   so in one line (no traceback), and re-running the job repairs it.
Prints one JSON line of counts. Not a test: minutes on 2 cores.
"""

import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ['--config=configs/digits_mlp.py', '--config.num_models=48',
         '--config.models_per_device=8', '--config.model.hidden=(32,)',
         '--config.train.epochs=4', '--compilation_cache=']


def _job(workdir, *extra):
  return [sys.executable, '-m', 'feldman_zhang.main', f'--workdir={workdir}',
          *FLAGS, *extra]


def _run(cmd):
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                        timeout=900)


def _files(workdir):
  return {os.path.relpath(p, workdir): open(p, 'rb').read()
          for p in glob.glob(os.path.join(workdir, '**', '*'), recursive=True)
          if os.path.isfile(p) and (p.endswith('.npz') or '/infl' in p)
          and '/chunks/' not in p}


def main(out, kills=10):
  os.makedirs(out, exist_ok=True)
  counts = dict(kill_trials=0, kill_resumed_identical=0, tracebacks=0,
                duplicate_models=0, concurrent_refused=0, corrupt_one_line=0,
                corrupt_repaired=0, corrupt_trials=0)
  ref = os.path.join(out, 'ref')
  assert _run(_job(ref)).returncode == 0
  want = _files(ref)
  rng = random.Random(0)
  for trial in range(kills):
    w = os.path.join(out, f'kill{trial}')
    p = subprocess.Popen(_job(w), cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(3, 25))
    p.send_signal(signal.SIGKILL)
    p.wait()
    r = _run(_job(w))
    counts['kill_trials'] += 1
    counts['tracebacks'] += 'Traceback' in r.stderr
    ids = [os.path.basename(c) for c in glob.glob(os.path.join(w, 'chunks',
                                                               'models_*'))]
    spans = sorted(tuple(int(x) for x in c[7:-4].split('-')) for c in ids)
    counts['duplicate_models'] += sum(a[1] > b[0] for a, b in
                                      zip(spans, spans[1:]))
    counts['kill_resumed_identical'] += (r.returncode == 0 and
                                         _files(w) == want)
  w = os.path.join(out, 'pair')
  procs = [subprocess.Popen(_job(w), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  outs = [p.communicate(timeout=900) for p in procs]
  codes = sorted(p.returncode for p in procs)
  counts['tracebacks'] += sum('Traceback' in e for _, e in outs)
  counts['concurrent_refused'] = int(codes == [0, 1] and any(
      'in use by another process' in e for _, e in outs))
  for rel in sorted(want) + ['run.json', 'config.json', 'summary.json']:
    w = os.path.join(out, 'corrupt')
    shutil.rmtree(w, ignore_errors=True)
    shutil.copytree(ref, w)
    path = os.path.join(w, rel)
    data = bytearray(open(path, 'rb').read())
    for i in range(8):
      data[(len(data) * (i + 1)) // 10] ^= 0xFF
    open(path, 'wb').write(bytes(data))
    report = _run([sys.executable, '-m', 'analysis.report',
                   f'--workdir={w}'])
    job = _run(_job(w))
    counts['corrupt_trials'] += 1
    counts['tracebacks'] += ('Traceback' in report.stderr) + (
        'Traceback' in job.stderr)
    lines = [l for l in (report.stderr + job.stderr).splitlines()
             if l.startswith('error:')]
    counts['corrupt_one_line'] += bool(lines) or report.returncode == 0
    counts['corrupt_repaired'] += (job.returncode == 0 and _files(w) == want
                                   ) or rel == 'run.json'
  print(json.dumps(counts))


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10)
