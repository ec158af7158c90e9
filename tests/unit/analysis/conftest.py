import functools

import pytest
import torch

from llamalab.config import ModelArgs
from llamalab.model import Transformer


def _build_on_meta(preset: str) -> Transformer:
    with torch.device("meta"):
        return Transformer(ModelArgs.from_preset(preset))


@pytest.fixture(scope="session")
def meta_model():
    """meta_model(preset): the preset's model on the meta device (shapes only), built once per session."""
    return functools.cache(_build_on_meta)
