import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny models here train fastest on one thread; two stall for long when other processes share the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
