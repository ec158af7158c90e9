"""llamalab: LLaMA 2 / LLaMA 3 from first principles in PyTorch."""
from llamalab.config import ModelArgs, RopeScaling
from llamalab.errors import LlamalabError

__version__ = "0.1.0"
__all__ = ["ModelArgs", "RopeScaling", "LlamalabError", "__version__"]
