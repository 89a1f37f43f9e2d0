"""launch/carry_parts.sh: a file too large for one device call travels in
parts and is joined there only when every part arrived intact."""
import os
import subprocess

import numpy as np
import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), '..', 'launch',
                      'carry_parts.sh')


def _run(*args, cwd):
  return subprocess.run(['bash', SCRIPT, *args], cwd=cwd, capture_output=True,
                        text=True, check=False)


@pytest.fixture
def split_file(tmp_path):
  """A 25,000-byte file split into parts of 10 KiB: (its bytes, tmp_path)."""
  data = np.random.default_rng(0).integers(0, 256, 25_000, np.uint8).tobytes()
  (tmp_path / 'x.npz').write_bytes(data)
  r = _run('split', 'x.npz', 'parts', '10K', cwd=tmp_path)
  assert r.returncode == 0, r.stderr
  return data, tmp_path


def test_split_then_join_gives_the_file_back(split_file):
  data, d = split_file
  parts = sorted(p.name for p in (d / 'parts').iterdir())
  assert parts == ['x.npz.manifest'] + [f'x.npz.part_0{i}' for i in range(3)]
  assert [(d / 'parts' / p).stat().st_size for p in parts[1:]] == [
      10240, 10240, 25_000 - 20480]
  r = _run('join', 'parts', 'x.npz', 'there/x.npz', cwd=d)
  assert r.returncode == 0, r.stderr
  assert (d / 'there' / 'x.npz').read_bytes() == data


def test_join_refuses_a_missing_part_in_one_line(split_file):
  _, d = split_file
  (d / 'parts' / 'x.npz.part_01').unlink()
  r = _run('join', 'parts', 'x.npz', 'out.npz', cwd=d)
  assert r.returncode == 1
  assert r.stderr.strip() == ('error: 3 parts expected; missing: '
                              'parts/x.npz.part_01')
  assert not (d / 'out.npz').exists()


def test_join_refuses_a_damaged_part_and_writes_nothing(split_file):
  _, d = split_file
  part = d / 'parts' / 'x.npz.part_02'
  b = bytearray(part.read_bytes())
  b[7] ^= 1
  part.write_bytes(bytes(b))
  r = _run('join', 'parts', 'x.npz', 'out.npz', cwd=d)
  assert r.returncode == 1
  assert 'a part is damaged or from another split' in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1
  assert not any(p.name.startswith('out.npz') for p in d.iterdir())


def test_join_without_the_manifest_says_to_carry_it(split_file):
  _, d = split_file
  (d / 'parts' / 'x.npz.manifest').unlink()
  r = _run('join', 'parts', 'x.npz', 'out.npz', cwd=d)
  assert r.returncode == 1 and 'carry it with the parts' in r.stderr


def test_a_second_split_replaces_the_first_parts(split_file):
  _, d = split_file
  small = b'0123456789' * 100
  (d / 'x.npz').write_bytes(small)
  assert _run('split', 'x.npz', 'parts', '10K', cwd=d).returncode == 0
  assert sorted(p.name for p in (d / 'parts').iterdir()) == [
      'x.npz.manifest', 'x.npz.part_00']
  assert _run('join', 'parts', 'x.npz', 'o', cwd=d).returncode == 0
  assert (d / 'o').read_bytes() == small
