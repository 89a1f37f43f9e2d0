"""What prepare refuses before a workdir is touched: a run that would not
fit the host's or a device's memory."""

import pytest

from feldman_zhang import errors
from feldman_zhang import pipeline


@pytest.mark.integration
def test_a_request_beyond_host_memory_is_refused_first(tiny_config, tmp_path):
  tiny_config.num_models = 10**12
  workdir = tmp_path / 'run'
  with pytest.raises(errors.ConfigError, match=r'needs about .* TB of '
                     'host memory'):
    pipeline.run(tiny_config, str(workdir))
  assert not workdir.exists()


@pytest.mark.integration
def test_a_call_beyond_device_memory_is_refused_first(tiny_config, tmp_path):
  tiny_config.num_models = tiny_config.models_per_device = 10**6
  tiny_config.model.hidden = (2048, 2048)
  workdir = tmp_path / 'run'
  with pytest.raises(errors.ConfigError, match=r'models_per_device=1,000,000'
                     r' needs at least .* TB on a device'):
    pipeline.run(tiny_config, str(workdir))
  assert not workdir.exists()
