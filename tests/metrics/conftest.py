"""Fixtures: tiny random-weight metrics (builders in :mod:`testbed.metrics`),
saved to tmp folders in the real layout and loaded back through the real loaders."""
from pathlib import Path

import pytest
import torch

from testbed import metrics as _t
from testbed.metrics import *  # noqa: F401,F403

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("metric_weights")


def _weights_fixture(builder):
    @pytest.fixture(scope="session")
    def fixture(tiny_root):
        return builder(tiny_root)
    return fixture


# one session fixture ``<name>_dir`` per tiny folder, named as its config.yaml `weights:` entry
# (a metric's second folder -- tokenizer, processor, CLIP backbone -- is a fixture of its own)
for _name in ('hps', 'aesthetic', 'clip_l14', 'pickscore', 'clip_h14_processor', 'imagereward', 'bert_base_uncased',
              'blip_vqa', 'owlvit', 'gdino', 'dpt', 'git'):
    globals()[f"{_name}_dir"] = _weights_fixture(getattr(_t, f"make_{_name}_dir"))
