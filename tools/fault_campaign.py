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
5. A full disk (root only: a tmpfs at 24 sizes, 16 kB to 16 MB): a fresh run
   fails in one line or finishes; extending a finished run onto a disk
   without room for the new models fails in one line and leaves the
   finished estimates as they were. Twice: as the job runs (its plan refuses
   a disk too small before it starts), and with that check off, so every
   write meets the full disk itself. --only=disk runs this part alone.
6. Malformed inputs: each one exits non-zero with one line, no traceback.
7. Issue 27 (`_issue27`, also alone: --only=issue27, about six minutes on
   2 busy cores): files of another run copied in (`_foreign_files`): a
   chunk of another seed, a chunk of another epoch count and, in a C-score
   run, a chunk of ratio 0.7 in ratio 0.5's chunks, each under the name of
   one of the run's own: set aside in chunks/corrupt, its models retrained,
   the estimates (C-scores) bit-identical; another run's estimates.npz and
   dense infl files: report and export_pairs refuse them in one line,
   writing nothing; SIGTERM and a second SIGINT in a job; the lock's note
   file removed under its holder; flipped bytes in the lastlayer
   backbone's weights; damaged experiment files, a full disk, an
   unwritable --out and Ctrl-C in the analysis commands; a killed pair
   export; a config file that does not load; training of no step.
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


def main(out, kills=10, pairs=1, only=None):
  os.makedirs(out, exist_ok=True)
  if only in ('issue27', 'disk'):
    ref = os.path.join(out, 'ref')
    if not os.path.exists(os.path.join(ref, 'estimates.npz')):
      assert _run(_job(ref)).returncode == 0
    print(json.dumps(_issue27(out, ref) if only == 'issue27' else
                     _full_disk(out, ref, _files(ref))))
    return
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
  counts.update(_issue27(out, ref))
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


def _default_sigint():
  signal.signal(signal.SIGINT, signal.SIG_DFL)


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
  # Up to 16 MB: a finished run (dense infl and infl_margin) is 5.6 MB, so
  # the largest sizes finish and their extension trials run.
  sizes = [int(16e3 * (16e6 / 16e3)**(i / 23)) for i in range(24)]
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


# -- issue 27 ---------------------------------------------------------------


def _one_line(r, *words):
  """Whether r ended non-zero with exactly one line of its own on stderr
  (log lines aside), an error holding every word, and no traceback."""
  lines = [l for l in r.stderr.splitlines() if l.strip() and
           not l.startswith(('I1', 'W1', 'E1', 'WARNING', 'I0', 'W0'))]
  ok = (r.returncode != 0 and 'Traceback' not in r.stderr and
        len(lines) == 1 and all(w in lines[0] for w in words))
  if not ok:
    print(f'not one line ({r.returncode}): {r.args[3:]}: {lines[-3:]}',
          file=sys.stderr)
  return ok


def _analysis(name, *args, patch=''):
  """analysis.NAME, with `patch` (Python source) run first."""
  code = ('import runpy, sys\n' + patch + '\nsys.argv = sys.argv[1:]\n'
          f"runpy.run_module('analysis.{name}', run_name='__main__')")
  return _run([sys.executable, '-c', code, name, *args])


_FULL_DISK = ('import errno, os\n'
              'def full(fd):\n'
              '  raise OSError(errno.ENOSPC, "No space left on device")\n'
              'os.fsync = full')
_CTRL_C = ('from feldman_zhang.analysis import runs\n'
           'def ctrl_c(*a, **k):\n  raise KeyboardInterrupt\n'
           'runs.load_run = ctrl_c')


def _temps(root):
  return [os.path.join(r, n) for r, _, names in os.walk(root)
          for n in names if n.startswith('.tmp-')]


def _fresh_run(out, name, *extra):
  """A finished run of the job with `extra` in OUT/name, made anew."""
  w = os.path.join(out, name)
  shutil.rmtree(w, ignore_errors=True)
  r = _run(_job(w, *extra))
  assert r.returncode == 0, r.stderr[-2000:]
  return w


def _snapshot(root):
  """{relative path: (size, mtime)} of every file under root."""
  return {os.path.relpath(os.path.join(r, n), root):
          (os.path.getsize(os.path.join(r, n)),
           os.path.getmtime(os.path.join(r, n)))
          for r, _, names in os.walk(root) for n in names}


def _foreign_chunk(src, dst, workdir, *extra):
  """Copies the chunk src (another run's) over dst, a chunk of the same
  name, and reruns the job of workdir (with extra). Returns (whether it
  finished with no traceback, whether it logged dst as another run's and
  set exactly src's bytes aside in chunks/corrupt beside dst)."""
  # Else the trial would prove nothing: the chunk must change the results.
  assert open(src, 'rb').read() != open(dst, 'rb').read(), (src, dst)
  shutil.copyfile(src, dst)
  r = _run(_job(workdir, *extra))
  aside = os.path.join(os.path.dirname(dst), 'corrupt', os.path.basename(dst))
  finished = r.returncode == 0 and 'Traceback' not in r.stderr
  set_aside = (os.path.exists(aside) and
               open(aside, 'rb').read() == open(src, 'rb').read() and
               f'chunk {dst} belongs to another run' in r.stderr and
               'moving it to chunks/corrupt' in r.stderr)
  if not (finished and set_aside):
    print(f'foreign chunk {src} -> {dst}: rc {r.returncode}: '
          f'{r.stderr.splitlines()[-3:]}', file=sys.stderr)
  return finished, set_aside


def _foreign_files(out, ref, add):
  """Items 1-3: files of another run copied in are set aside or refused."""
  want = _files(ref)
  chunk = os.path.join('chunks', 'models_0000016-0000024.npz')
  seed1 = _fresh_run(out, 'foreign_seed1', '--config.seed=1')
  epochs3 = _fresh_run(out, 'foreign_epochs3', '--config.train.epochs=3',
                       '--config.num_models=24')  # up to the chunk copied

  # 1 (another seed), 2 (another epoch count, once stuck in a traceback):
  # a chunk of the same name is set aside, its models retrained.
  for tag, donor in (('chunk', seed1), ('epochs_chunk', epochs3)):
    w = os.path.join(out, f'foreign_{tag}')
    shutil.rmtree(w, ignore_errors=True)
    shutil.copytree(ref, w)
    finished, set_aside = _foreign_chunk(
        os.path.join(donor, chunk), os.path.join(w, chunk), w)
    add(f'foreign_{tag}_finished', finished)
    add(f'foreign_{tag}_set_aside', set_aside)
    add(f'foreign_{tag}_same_estimates', finished and _files(w) == want)

  # 1, across C-score ratios: a chunk of ratio 0.7 (the run's own) copied
  # into ratio 0.5's run under the same name.
  flags = ('--config.num_models=16', '--config.subset_ratios=(0.5,0.7)')
  c = _fresh_run(out, 'foreign_ratio', *flags)
  before = _files(c)
  small = os.path.join('chunks', 'models_0000008-0000016.npz')
  donor = os.path.join(out, 'foreign_ratio_0.7.npz')  # kept: c's is retrained
  shutil.copyfile(os.path.join(c, small), donor)
  finished, set_aside = _foreign_chunk(
      donor, os.path.join(c, 'ratios', '0.5000', small), c, *flags)
  add('foreign_ratio_chunk_finished', finished)
  add('foreign_ratio_chunk_set_aside', set_aside)
  with np.load(os.path.join(c, 'estimates.npz')) as est:
    has_cscore = 'cscore' in est.files
  add('foreign_ratio_same_cscores', finished and has_cscore and
      _files(c) == before)

  # 3: another run's estimates (and dense infl files) copied in: the
  # analysis refuses them in one line and writes nothing.
  w = os.path.join(out, 'foreign_estimates')
  shutil.rmtree(w, ignore_errors=True)
  shutil.copytree(ref, w)
  for path in glob.glob(os.path.join(w, 'infl*.npy')):
    os.remove(path)
  for path in [os.path.join(seed1, 'estimates.npz'),
               *glob.glob(os.path.join(seed1, 'infl*.npy'))]:
    shutil.copy(path, w)
  files = _snapshot(w)
  for name in ('report', 'export_pairs'):
    add('foreign_estimates_one_line', _one_line(
        _analysis(name, f'--workdir={w}'), f'{w}/estimates.npz',
        'made by another run'))
    add('foreign_estimates_trials', True)
  add('foreign_estimates_nothing_written', _snapshot(w) == files)


def _issue27(out, ref):
  counts = {}
  add = lambda key, ok: counts.__setitem__(key, counts.get(key, 0) + bool(ok))
  sys.path.insert(0, ROOT)
  from feldman_zhang import chunks  # pylint: disable=import-outside-toplevel
  from feldman_zhang import store  # pylint: disable=import-outside-toplevel

  _foreign_files(out, ref, add)

  # 10: SIGTERM, then two SIGINTs, after the first chunk.
  for sig, code, twice in ((signal.SIGTERM, 143, False),
                           (signal.SIGINT, 130, True)):
    w = os.path.join(out, f'signal{code}')
    shutil.rmtree(w, ignore_errors=True)
    # The job keeps a signal ignored when it starts (nohup): give it
    # SIGINT's default action whatever the campaign itself was started with.
    p = subprocess.Popen(_job(w, '--config.num_models=4000'), cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=_default_sigint)
    deadline = time.time() + 300
    while not glob.glob(os.path.join(w, 'chunks', 'models_*')):
      if p.poll() is not None or time.time() > deadline:
        break
      time.sleep(0.1)
    p.send_signal(sig)
    if twice:
      time.sleep(0.2)
      p.send_signal(sig)
    _, err = p.communicate(timeout=300)
    readable = True
    for _, _, path in chunks.list_chunks(w):
      try:
        chunks.read_chunk(path)
      except store.StoreError:
        readable = False
    add(f'signal_{code}', p.returncode == code and 'Traceback' not in err
        and 'interrupted: the models stored' in err and readable)

  # 6: the lock's note removed under its holder lets no second job in.
  w = os.path.join(out, 'lock')
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import time; from feldman_zhang import store\n'
       f'with store.locked({w!r}):\n  print("held", flush=True); '
       'time.sleep(120)'], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  holder.stdout.readline()
  os.remove(os.path.join(w, store.LOCK_FILE))
  r = _run(_job(w))
  holder.kill()
  holder.wait()
  add('lock_note_removed_refused', _one_line(r, 'in use by another process'))

  # 4 and 7: the backbone's weights flipped, restored only after a retrain.
  w = os.path.join(out, 'backbone')
  shutil.rmtree(w, ignore_errors=True)
  shutil.copytree(ref, w)
  last = _job(w, '--mode=lastlayer', '--config.lastlayer.epochs=2')
  first = _run(last)
  comparison = store.Workdir(w).comparison_json
  want = store.read_json(comparison) if first.returncode == 0 else None
  backbone = store.Workdir(w).backbone
  weights = max((os.path.join(r_, n) for r_, _, ns in os.walk(backbone)
                 for n in ns), key=os.path.getsize)
  data = bytearray(open(weights, 'rb').read())
  for i in range(4):
    data[len(data) // 2 + i] ^= 0x01
  open(weights, 'wb').write(bytes(data))
  again = _run(last)
  add('backbone_flip_caught', first.returncode == 0 and again.returncode == 0
      and 'fails its checksum' in again.stderr)
  # The backbone trained again is the same: so is every number after it.
  add('backbone_flip_same_result', again.returncode == 0 and
      store.read_json(comparison) == want)
  add('backbone_no_temp_folder', not glob.glob(f'{backbone}.*orbax*'))

  # 8: damaged experiment files in the report and the figures.
  def damaged(rel, data):
    d = os.path.join(out, 'damaged')
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(w, d)
    os.makedirs(os.path.join(d, 'drop'), exist_ok=True)
    with open(os.path.join(d, 'drop', 'drop.csv'), 'w') as f:
      f.write('theta,num_removed,fraction_removed,acc_high_mem_removed,'
              'acc_high_mem_removed_se,acc_random_removed,'
              'acc_random_removed_se,models_per_arm\n'
              '0.5,12,0.009,0.91,0.004,0.93,0.003,8\n')
    path = os.path.join(d, rel)
    with open(path, 'rb') as f:
      damage = data(f.read())
    with open(path, 'wb') as f:
      f.write(damage)
    return d, path
  flip = lambda b: b[:len(b) // 2] + bytes([b[len(b) // 2] ^ 0xFF]) + \
      b[len(b) // 2 + 1:]
  for rel, data, rebuild in (
      ('drop/drop.csv', lambda b: bytes(range(128, 256)) * 4, '--mode=drop'),
      ('lastlayer/comparison.json', lambda b: b[:len(b) // 2],
       '--mode=lastlayer'),
      ('lastlayer/estimates.npz', flip, '--mode=lastlayer')):
    d, path = damaged(rel, data)
    for name in ('report', 'experiment_figures'):
      if name == 'experiment_figures' and 'comparison' in rel:
        continue
      add('damaged_experiment_one_line', _one_line(
          _analysis(name, f'--workdir={d}'), path, rebuild))
      add('damaged_experiment_trials', True)

  # 7, 9: a full disk, an unwritable --out and Ctrl-C in the analysis.
  d, _ = damaged('run.json', lambda b: b)  # a sound copy with experiments
  afile = os.path.join(out, 'afile')
  open(afile, 'w').write('x')
  for name, args in (('export_pairs', []), ('galleries', []),
                     ('report', []), ('experiment_figures', []),
                     ('release', [f'--write_classes={d}/classes.npz'])):
    add('full_disk_one_line', _one_line(
        _analysis(name, f'--workdir={d}', *args, patch=_FULL_DISK),
        'cannot write', 'No space left on device'))
    add('full_disk_trials', True)
  add('full_disk_no_temp', not _temps(d))
  for name in ('export_pairs', 'galleries'):
    add('unwritable_out_one_line', _one_line(_analysis(
        name, f'--workdir={d}', f'--out={afile}/out'), 'Not a directory'))
  for name in ('report', 'export_pairs'):
    r = _analysis(name, f'--workdir={d}', patch=_CTRL_C)
    add('ctrl_c_analysis', r.returncode == 130 and
        r.stderr.strip().splitlines() == ['interrupted'])
  unfinished = os.path.join(out, 'unfinished')
  shutil.rmtree(unfinished, ignore_errors=True)
  os.makedirs(unfinished)
  shutil.copy(os.path.join(ref, 'run.json'), unfinished)
  add('compare_unfinished_one_line', _one_line(
      _analysis('compare_runs', f'--a={ref}', f'--b={unfinished}'),
      'has no estimates.npz'))

  # 11: a killed export leaves no mixed set; the next one clears it.
  pairs = os.path.join(d, 'pairs')
  kill = ('import os\nreplace = os.replace\n'
          'def killed(src, dst):\n'
          '  if os.path.basename(dst) == "pairs.json": os._exit(9)\n'
          '  replace(src, dst)\n'
          'os.replace = killed')
  _analysis('export_pairs', f'--workdir={d}', '--max_pairs=3', patch=kill)
  mixed = (os.path.exists(os.path.join(pairs, 'pairs.npz')) and
           os.path.exists(os.path.join(pairs, 'pairs.csv')) and
           os.path.getmtime(os.path.join(pairs, 'pairs.csv')) >
           os.path.getmtime(os.path.join(pairs, 'pairs.npz')))
  r = _analysis('export_pairs', f'--workdir={d}', '--grids=0')
  add('export_never_mixed', not mixed and r.returncode == 0 and
      sorted(os.listdir(pairs)) == ['pairs.csv', 'pairs.json', 'pairs.npz'])

  # 9, 5: config files that do not load; training of no step.
  broken = os.path.join(out, 'broken')
  os.makedirs(broken, exist_ok=True)
  for text in ('def get_config(:\n', 'X = 1\n', 'import no_such_zz\n'):
    path = os.path.join(broken, 'config.py')
    open(path, 'w').write(text)
    add('config_file_one_line', _one_line(
        _run([sys.executable, '-m', 'feldman_zhang.main',
              f'--workdir={out}/never', f'--config={path}']),
        f'cannot load --config {path}'))
  add('no_step_one_line', _one_line(_run(_job(f'{out}/never',
                                              '--config.train.epochs=1e-9')),
                                    'trains no step'))
  add('no_step_no_workdir', not os.path.exists(f'{out}/never'))
  return counts


if __name__ == '__main__':
  args = [a for a in sys.argv[1:] if not a.startswith('--only=')]
  only = [a.split('=', 1)[1] for a in sys.argv[1:] if a.startswith('--only=')]
  main(args[0], int(args[1]) if len(args) > 1 else 10,
       int(args[2]) if len(args) > 2 else 1, only[0] if only else None)
