"""Fixtures: tiny random-weight metrics (builders in :mod:`marpipe.metrics.tiny`),
saved to tmp folders in the real layout and loaded back through the real loaders."""
from pathlib import Path

import pytest
import torch

from marpipe.metrics.tiny import *  # noqa: F401,F403
from marpipe.metrics import tiny as _t

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("metric_weights")


@pytest.fixture(scope="session")
def hps_dir(tiny_root):
    return _t.make_hps_dir(tiny_root)


@pytest.fixture(scope="session")
def aesthetic_dir(tiny_root):
    return _t.make_aesthetic_dir(tiny_root)


@pytest.fixture(scope="session")
def pickscore_dir(tiny_root):
    return _t.make_pickscore_dir(tiny_root)


@pytest.fixture(scope="session")
def imagereward_dir(tiny_root):
    return _t.make_imagereward_dir(tiny_root)


@pytest.fixture(scope="session")
def blip_vqa_dir(tiny_root):
    return _t.make_blip_vqa_dir(tiny_root)
