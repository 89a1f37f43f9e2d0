"""tools/recipe_accuracy.py: a training cut by a kill resumes bit for bit,
and a state of another training is refused."""

import json

import numpy as np
import pytest

from conftest import make_tiny_config
from feldman_zhang import prepare as prepare_lib
from tools import recipe_accuracy


def _job(ratio=0.7):
  c = make_tiny_config()
  c.subset_ratio = ratio
  return prepare_lib.prepare(c)


def test_a_killed_training_resumes_bit_for_bit(tmp_path, monkeypatch,
                                               capsys):
  job = _job()
  whole = recipe_accuracy.train_model(job, 'tiny', '0.7', 1,
                                      str(tmp_path / 'whole'))
  save, calls = recipe_accuracy._save, []

  def killed_after_three(*args):
    save(*args)
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt

  monkeypatch.setattr(recipe_accuracy, '_save', killed_after_three)
  with pytest.raises(KeyboardInterrupt):
    recipe_accuracy.train_model(job, 'tiny', '0.7', 1, str(tmp_path / 'cut'))
  monkeypatch.setattr(recipe_accuracy, '_save', save)
  with np.load(tmp_path / 'cut' / 'model_1.npz') as f:
    assert int(f['done']) == 3
  capsys.readouterr()
  resumed = recipe_accuracy.train_model(job, 'tiny', '0.7', 1,
                                        str(tmp_path / 'cut'))
  # It went on from the saved pass rather than training again from the start.
  said = capsys.readouterr().out
  assert 'resuming after pass 3 of 8' in said
  assert 'pass 4/8' in said and 'pass 3/8' not in said
  assert resumed == whole
  assert len(whole['epoch_losses']) == 8
  assert 0.5 < whole['test_tta'] <= 1 and 0.5 < whole['heldout_tta'] <= 1
  with np.load(tmp_path / 'whole' / 'model_1.npz') as a, \
       np.load(tmp_path / 'cut' / 'model_1.npz') as b:
    for k in a.files:
      np.testing.assert_array_equal(a[k], b[k])
  assert json.loads((tmp_path / 'cut' / 'model_1.json').read_text()) == whole


def test_a_state_of_another_training_is_refused(tmp_path):
  job = _job()
  recipe_accuracy.train_model(job, 'tiny', '0.7', 0, str(tmp_path))
  # Model 0's file, read as model 0 of another ratio.
  with pytest.raises(SystemExit, match='another training'):
    recipe_accuracy.train_model(_job(0.5), 'tiny', '0.5', 0, str(tmp_path))


def test_a_state_saved_under_other_scheduling_fields_resumes(tmp_path,
                                                             capsys):
  # A state saved before a scheduling field existed (or with another
  # num_models) is the same training: it must not be orphaned.
  job = _job()
  first = recipe_accuracy.train_model(job, 'tiny', '0.7', 0, str(tmp_path))
  path = tmp_path / 'model_0.npz'
  with np.load(path) as f:
    saved = {k: f[k] for k in f.files}
  identity = json.loads(str(saved['identity']))
  del identity['config']['cpu_models_per_device']
  identity['config']['num_models'] += 1
  saved['identity'] = np.array(json.dumps(identity, sort_keys=True))
  np.savez(path, **saved)
  (tmp_path / 'model_0.json').unlink()
  capsys.readouterr()
  again = recipe_accuracy.train_model(job, 'tiny', '0.7', 0, str(tmp_path))
  assert 'resuming after pass 8 of 8' in capsys.readouterr().out
  assert again == first
  # A field that changes the training is still another training.
  identity['config']['train']['lr'] *= 2
  saved['identity'] = np.array(json.dumps(identity, sort_keys=True))
  np.savez(path, **saved)
  with pytest.raises(SystemExit, match='another training'):
    recipe_accuracy.train_model(job, 'tiny', '0.7', 0, str(tmp_path))
