import os

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "disable")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests use tiny networks: one thread is fastest and keeps numbers reproducible."""
    torch.set_num_threads(1)
