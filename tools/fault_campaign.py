"""The fault-injection campaign of issue 17 on the digits job.

  python tools/fault_campaign.py OUT_DIR [KILLS] [PAIRS]

1. SIGKILL at random times (KILLS trials, t = 48, K = 8), then a resume:
   every resumed run must be bit-identical to an uninterrupted one, and no
   model may be stored twice.
2. Two processes on one workdir: exactly one trains, the other is refused in
   one line.
3. Each file of a finished run corrupted in turn: the job or the report says
   so in one line (no traceback), and re-running the job repairs it.
4. Concurrent processes on one workdir (PAIRS pairs, half of them at
   different models_per_device): never a traceback, never a model stored
   twice, one process refused; the equal-K pairs' files identical to the
   uninterrupted run's (a K = 16 run compiles other shapes: chunks only).
5. A full disk (root only: a tmpfs at 24 sizes, 16 kB to 4 MB): a fresh run
   fails in one line or finishes; extending a finished run onto a disk
   without room for the new models fails in one line and leaves the
   finished estimates as they were. Twice: as the job runs (its plan refuses
   a disk too small before it starts), and with that check off, so every
   write meets the full disk itself.
6. Malformed inputs: each one exits non-zero with one line, no traceback.
Prints one JSON line of counts. Not a test: tens of minutes on 2 cores.
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

import numpy as np

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


def main(out, kills=10, pairs=1):
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
    counts['duplicate_models'] += _overlaps(_spans(w))
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
  counts.update(_pairs(out, want, pairs))
  if os.geteuid() == 0:
    counts.update(_full_disk(out, ref, want))
  counts.update(_malformed(out, ref))
  print(json.dumps(counts))


def _spans(w):
  """[(start, stop)] of w's chunk files, by start."""
  names = [os.path.basename(c) for c in glob.glob(os.path.join(w, 'chunks',
                                                               'models_*'))]
  return sorted(tuple(int(x) for x in c[7:-4].split('-')) for c in names)


def _overlaps(spans):
  """How many chunks share models with the next one: models stored twice."""
  return sum(a[1] > b[0] for a, b in zip(spans, spans[1:]))


def _pairs(out, want, pairs):
  counts = dict(pair_trials=0, pair_tracebacks=0, pair_duplicate_models=0,
                pair_one_refused=0, pair_finished_identical=0)
  for trial in range(pairs):
    w = os.path.join(out, f'pair{trial}')
    ks = (8, 16) if trial % 2 else (8, 8)
    procs = []
    for i, k in enumerate(ks):
      procs.append(subprocess.Popen(
          _job(w, f'--config.models_per_device={k}'), cwd=ROOT,
          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
      if i == 0:
        time.sleep(trial % 3)  # at once, and once the first one runs
    outs = [p.communicate(timeout=900) for p in procs]
    spans = _spans(w)
    counts['pair_trials'] += 1
    counts['pair_tracebacks'] += sum('Traceback' in e for _, e in outs)
    counts['pair_duplicate_models'] += _overlaps(spans)
    codes = sorted(p.returncode for p in procs)
    counts['pair_one_refused'] += codes == [0, 1] and any(
        'in use by another process' in e for _, e in outs)
    # The refused one's arm leaves the run to the other: it is finished.
    # (K = 16 trains other chunk shapes: the floats may differ, the ids not.)
    counts['pair_finished_identical'] += (
        _files(w) == want if ks == (8, 8) else bool(spans))
  return counts


def _unplanned(cmd):
  """cmd with the job's disk check off: the writes meet ENOSPC themselves."""
  code = ('import runpy, sys; from feldman_zhang import cost; '
          'cost.check_disk = lambda *a: None; sys.argv = sys.argv[1:]; '
          "runpy.run_module('feldman_zhang.main', run_name='__main__')")
  return [cmd[0], '-c', code, 'main', *cmd[3:]]


def _full_disk(out, ref, want):
  counts = dict(disk_trials=0, disk_tracebacks=0, disk_one_line=0,
                disk_finished=0, disk_extend_trials=0,
                disk_extend_kept=0)
  for unplanned in (False, True):
    tag = '_unplanned' if unplanned else ''
    part = _full_disk_pass(out, ref, want, _unplanned if unplanned else
                           (lambda cmd: cmd))
    counts.update({k + tag: v for k, v in part.items()})
  return counts


def _full_disk_pass(out, ref, want, wrap):
  counts = dict(disk_trials=0, disk_tracebacks=0, disk_one_line=0,
                disk_finished=0, disk_extend_trials=0,
                disk_extend_kept=0)
  mount = os.path.join(out, 'tmpfs')
  os.makedirs(mount, exist_ok=True)
  sizes = [int(16e3 * (4e6 / 16e3)**(i / 23)) for i in range(24)]
  for size in sizes:
    subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs',
                    mount], check=True)
    try:
      r = _run(wrap(_job(os.path.join(mount, 'run'))))
      counts['disk_trials'] += 1
      counts['disk_tracebacks'] += 'Traceback' in r.stderr
      errors = [l for l in r.stderr.splitlines() if l.startswith('error:')]
      counts['disk_finished'] += r.returncode == 0
      counts['disk_one_line'] += r.returncode == 0 or (
          r.returncode != 0 and len(errors) == 1)
      # A finished run that fits, extended past the room left.
      shutil.rmtree(os.path.join(mount, 'run'), ignore_errors=True)
      try:
        shutil.copytree(ref, os.path.join(mount, 'old'))
      except OSError:
        continue
      r = _run(wrap(_job(os.path.join(mount, 'old'),
                         '--config.num_models=4000')))
      counts['disk_extend_trials'] += 1
      counts['disk_tracebacks'] += 'Traceback' in r.stderr
      counts['disk_extend_kept'] += (r.returncode != 0 and
                                     _files(os.path.join(mount, 'old')) == want)
    finally:
      subprocess.run(['umount', mount], check=True)
  return counts


def _malformed(out, ref):
  d = os.path.join(out, 'inputs')
  os.makedirs(d, exist_ok=True)
  junk = os.path.join(d, 'junk.npz')
  with open(junk, 'wb') as f:
    f.write(os.urandom(4096))
  rng = np.random.default_rng(0)
  x = lambda n: rng.integers(0, 256, (n, 8, 8), np.uint8)
  big_label = os.path.join(d, 'big_label.npz')
  np.savez(big_label, x_train=x(20), y_train=np.r_[np.zeros(19), 2**31 - 1]
           .astype(np.int64), x_test=x(5), y_test=np.zeros(5, np.int64))
  one_class = os.path.join(d, 'one_class.npz')
  np.savez(one_class, x_train=x(20), y_train=np.zeros(20, np.int64),
           x_test=x(5), y_test=np.zeros(5, np.int64))
  a_file = os.path.join(d, 'a_file')
  open(a_file, 'w').write('x')
  w = os.path.join(d, 'run')
  job = lambda *a: [sys.executable, '-m', 'feldman_zhang.main',
                    f'--workdir={w}', '--config=configs/digits_mlp.py', *a]
  cases = [
      job('--config.num_models=0'), job('--config.num_models=-5'),
      job('--config.num_models=abc'), job('--config.num_models=10**12'),
      job('--config.num_models=1000000000000'),
      job('--config.subset_ratio=1.5'), job('--config.subset_ratio=0'),
      job('--config.train.lr=-1'), job('--config.train.epochs=0'),
      job('--config.train.batch_size=100000'),
      job('--config.models_per_device=0'), job('--config.seed=-1'),
      job('--config.data.label_noise=2'), job('--config.model.tta=weird'),
      job('--config.model.name=nope'), job('--config.unknown_field=3'),
      job('--config.estimate.infl=maybe'),
      job('--config.subset_ratios=(0.3,0.5)'),
      job('--config.data.source=npz:/nonexistent.npz'),
      job(f'--config.data.source=npz:{junk}'),
      job(f'--config.data.source=npz:{big_label}'),
      job(f'--config.data.source=npz:{one_class}'),
      job('--config.data.source=idx:/tmp'),
      job('--config.data.source=bogus:x'),
      job('--config.data.source=tfds:mnist', f'--config.data.data_dir={d}'),
      job('--config.data.source=random:0x0x1:10:100:10'),
      job('--mode=nope'),
      [sys.executable, '-m', 'feldman_zhang.main', f'--workdir={a_file}',
       '--config=configs/digits_mlp.py'],
      [sys.executable, '-m', 'feldman_zhang.main', '--workdir=/proc/x/y',
       '--config=configs/digits_mlp.py'],
      [sys.executable, '-m', 'feldman_zhang.main', f'--workdir={w}',
       '--config=configs/nope.py', '--config.num_models=3'],
      [sys.executable, '-m', 'feldman_zhang.main', f'--workdir={w}'],
      [sys.executable, '-m', 'analysis.report', f'--workdir={d}/missing'],
      [sys.executable, '-m', 'analysis.export_pairs', f'--workdir={a_file}'],
      [sys.executable, '-m', 'analysis.report', f'--workdir={ref}',
       '--out=/proc/nope'],
  ]
  counts = dict(malformed_trials=0, malformed_one_line=0,
                malformed_tracebacks=0)
  for cmd in cases:
    r = _run(cmd)
    lines = [l for l in r.stderr.splitlines() if l.strip() and
             not l.startswith(('I1', 'W1', 'E1', 'WARNING', 'I0', 'W0'))]
    counts['malformed_trials'] += 1
    counts['malformed_tracebacks'] += 'Traceback' in r.stderr
    ok = r.returncode != 0 and len(lines) == 1
    counts['malformed_one_line'] += ok
    if not ok:
      print(f'not one line ({r.returncode}): {cmd[3:]}: {lines[-3:]}',
            file=sys.stderr)
  return counts


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10,
       int(sys.argv[3]) if len(sys.argv) > 3 else 1)
