"""The int4 packing layout on CPU, against the documented nibble orders: ours (the even input column in the low
nibble) and the one PyTorch's CUDA kernel takes (the even column in the high nibble, as gpt-fast packs it), so
that the CUDA path cannot be broken without a CPU test failing."""
import torch

from llamalab.quantize.int4 import even_column_high, quantize_int4, unpack_int4


def known_codes() -> tuple[torch.Tensor, torch.Tensor]:
    """A weight (16, 64) whose int4 codes are known: each group of 32 spans 0..15 exactly, so code = value."""
    torch.manual_seed(0)
    codes = torch.randint(0, 16, (16, 64), dtype=torch.int32)
    codes[:, 0], codes[:, 1], codes[:, 32], codes[:, 33] = 0, 15, 15, 0  # every group reaches 0 and 15
    return codes.float(), codes


def test_quantize_packs_the_even_column_in_the_low_nibble():
    weight, codes = known_codes()
    packed, scales, zeros = quantize_int4(weight, group_size=32)
    assert packed.dtype == torch.uint8 and packed.shape == (16, 32)
    expected = (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8)  # the module docstring's order, by hand
    assert torch.equal(packed, expected)
    assert torch.equal(unpack_int4(packed).to(torch.int32), codes)
    torch.testing.assert_close(scales, torch.ones(16, 2))  # (15 - 0) / 15
    torch.testing.assert_close(zeros, torch.full((16, 2), 8.0))  # the value of the middle code


def test_the_cuda_kernel_input_has_the_even_column_in_the_high_nibble():
    _, codes = known_codes()
    packed, _, _ = quantize_int4(codes.float(), group_size=32)
    gpt_fast = (codes[:, 0::2] << 4 | codes[:, 1::2]).to(torch.uint8)  # how gpt-fast feeds _convert_weight_to_int4pack
    assert torch.equal(even_column_high(packed), gpt_fast)
