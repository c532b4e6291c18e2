"""Fixtures shared by the test modules."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: its tensors are tiny, and on a shared 2-core machine more threads than
    free cores make torch's spinning workers many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
