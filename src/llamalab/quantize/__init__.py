"""Weight-only quantization (int8 per channel, int4 group-wise; GGUF's blocks read in place: blocks.py) applied to a
built model from outside."""
from llamalab.quantize.int4 import Int4Linear, quantize_int4, unpack_int4
from llamalab.quantize.int8 import Int8Linear, dequantize_int8, quantize_int8
from llamalab.quantize.swap import SCHEMES, quantize_model

__all__ = ["Int4Linear", "Int8Linear", "SCHEMES", "dequantize_int8", "quantize_int4", "quantize_int8", "quantize_model",
           "unpack_int4"]
