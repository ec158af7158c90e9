"""llamalab: LLaMA 2 / LLaMA 3 from first principles in PyTorch."""
from llamalab.config import ModelArgs, RopeScaling
from llamalab.errors import LlamalabError

__version__ = "0.1.0"
__all__ = ["LlamalabError", "LoadedModel", "ModelArgs", "RopeScaling", "__version__", "load_model"]

_INFERENCE = ("LoadedModel", "load_model")  # imported on first use: torch takes ~1 s, `llamalab --help` needs none


def __getattr__(name: str):
    if name in _INFERENCE:
        from llamalab import inference

        return getattr(inference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
