import os

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "disable")
# The playground/ tests compile each task's tiny batch once and step it a few times: XLA's
# cheaper code generation compiles about a quarter faster, which is most of their time.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests use tiny networks: one thread is fastest and keeps numbers reproducible."""
    torch.set_num_threads(1)
