"""The C kernels built for an x86-64 CPU without AVX-512 (x86-64-v3: AVX2, FMA, F16C), whatever this machine has:
the portable paths of cpu_rows.h (vector extensions instead of AVX-512 intrinsics) against gguf's dequantization."""
import ctypes
import platform
import shutil
import subprocess

import numpy as np
import pytest
import torch
from gguf_block_layers import block_layer

from llamalab.quantize import native
from llamalab.quantize.blocks import BLOCK_BYTES, GGML_TYPE_IDS

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64" or not shutil.which("cc"), reason="x86-64 with cc only")


@pytest.fixture(scope="module")
def avx2_kernels(tmp_path_factory):
    built = tmp_path_factory.mktemp("avx2") / "kernels.so"
    flags = [flag for flag in native.FLAGS if flag != "-march=native"]
    subprocess.run(["cc", *map(str, native.SOURCES), "-march=x86-64-v3", "-Wno-psabi", *flags, "-o", str(built)],
                   check=True, capture_output=True)
    library = ctypes.CDLL(str(built))
    library.block_linear.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                                     ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    library.block_values.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return library


@pytest.mark.parametrize("kind", list(BLOCK_BYTES))
def test_values_and_products_without_avx512_are_gguf_s(avx2_kernels, kind):
    in_features = 512 if kind.endswith("_K") else 96
    layer, weight = block_layer(40, in_features, kind)
    blocks = layer.blocks.contiguous()
    values = torch.empty(40, in_features)
    avx2_kernels.block_values(blocks.data_ptr(), GGML_TYPE_IDS[kind], 40, in_features, values.data_ptr())
    assert torch.equal(values, weight)
    for rows in (1, 3, 6):  # one input, and the several-inputs pass of Q4_0 / Q4_1 / Q8_0
        x = torch.randn(rows, in_features)
        y = torch.empty(rows, 40)
        assert avx2_kernels.block_linear(x.data_ptr(), rows, blocks.data_ptr(), GGML_TYPE_IDS[kind], y.data_ptr(), 40,
                                         in_features) == 0
        exact = x.double() @ weight.double().t()
        assert np.abs((y.double() - exact).numpy()).max() <= 2e-6 * exact.abs().max().item()
