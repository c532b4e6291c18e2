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


def pytest_report_header(config):
    """The versions the run tested: CI runs some tests twice, the second time with the GPU image's transformers."""
    import transformers

    return f"torch {torch.__version__}, transformers {transformers.__version__} ({transformers.__file__})"
