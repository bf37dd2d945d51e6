"""Shared test setup: one thread (the test machine's cores are shared) and a fixed seed per test."""
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
