"""launch/colab_tpu_demo.ipynb runs headless on a CPU and shows its results."""

import json
import os
import re
import sys

import pytest

from conftest import ROOT

NOTEBOOK = os.path.join(ROOT, 'launch', 'colab_tpu_demo.ipynb')


def _outputs(nb):
  return [out for cell in nb.cells if cell.cell_type == 'code'
          for out in cell.get('outputs', [])]


def _text(out):
  if out.output_type == 'stream':
    return out.text
  return '\n'.join(str(v) for k, v in out.get('data', {}).items()
                   if k.startswith('text/'))


@pytest.mark.slow
def test_notebook_runs_on_cpu(tmp_path, monkeypatch):
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  pytest.importorskip('ipykernel')
  pytest.importorskip('matplotlib')

  # A kernel on this very interpreter (not whatever 'python3' kernel the
  # machine has), finding the package on PYTHONPATH, so the install cell must
  # do nothing; its temporary workdir lands under tmp_path.
  spec = tmp_path / 'jupyter' / 'kernels' / 'fz-test'
  spec.mkdir(parents=True)
  (spec / 'kernel.json').write_text(json.dumps(dict(
      argv=[sys.executable, '-m', 'ipykernel_launcher', '-f',
            '{connection_file}'],
      display_name='feldman_zhang test', language='python')))
  monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jupyter'))
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
      filter(None, [ROOT, os.environ.get('PYTHONPATH')])))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('TMPDIR', str(tmp_path))
  monkeypatch.delenv('MPLBACKEND', raising=False)

  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  nbclient.NotebookClient(
      nb, timeout=300, kernel_name='fz-test',
      resources={'metadata': {'path': os.path.dirname(NOTEBOOK)}}).execute()

  outputs = _outputs(nb)
  errors = [o for o in outputs if o.output_type == 'error']
  assert not errors, errors
  text = '\n'.join(_text(o) for o in outputs)
  assert 'feldman_zhang is importable: nothing to install' in text
  assert 'backend: cpu' in text
  assert '256 models on digits' in text  # the summary pipeline.run prints

  tables = [o.data['text/markdown'] for o in outputs
            if 'text/markdown' in o.get('data', {})]
  pairs = [t for t in tables if 'Top train -> test influence pairs' in t]
  assert len(pairs) == 1, tables
  rows = re.findall(r'^\| (\d+) \| (\d+) \| (\d) \| (\d+) \| (\d) \| '
                    r'(-?[\d.]+) ± ([\d.]+) \| (-?[\d.]+) \|$', pairs[0], re.M)
  assert len(rows) == 8, pairs[0]
  infl = [float(r[5]) for r in rows]
  assert infl == sorted(infl, reverse=True) and infl[-1] > 0, infl
  assert any('Most memorized training examples' in t for t in tables)

  images = [o for o in outputs if 'image/png' in o.get('data', {})]
  assert len(images) >= 2  # the pairs and the memorized examples
