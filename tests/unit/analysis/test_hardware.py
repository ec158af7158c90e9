import pytest

from llamalab.analysis import ACCELERATORS, accelerator_for_device, get_accelerator, mbu, mfu
from llamalab.config import ModelArgs
from llamalab.errors import ConfigError


def test_mfu_reproduces_a_measured_training_run():
    # issue 10: HF training step of the llama3.2-1b shape, seq 2048, 45.7k tokens/s on an H100 -> 38% MFU
    args = ModelArgs.from_preset("llama3.2-1b")
    assert mfu(45_700, args, 2048, ACCELERATORS["h100-sxm"].peak_flops) == pytest.approx(0.38, abs=0.005)


def test_mbu_reproduces_the_bandwidth_limit_of_7b_decoding():
    # issue 10: 3022 GB/s measured copy bandwidth allows 224 tok/s for the Llama-2-7B shape in bf16
    args = ModelArgs.from_preset("llama2-7b")
    assert mbu(224, args, context_len=6, peak_bandwidth=3022e9) == pytest.approx(1.0, abs=0.01)
    assert mbu(112, args, context_len=6, peak_bandwidth=3022e9) == pytest.approx(0.5, abs=0.005)


@pytest.mark.parametrize("device_name, expected", [
    ("NVIDIA H100 80GB HBM3", "h100-sxm"),
    ("NVIDIA H100 PCIe", "h100-pcie"),
    ("NVIDIA H200", "h200"),
    ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
    ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
    ("NVIDIA L4", "l4"),
    ("NVIDIA L40S", "l40s"),
    ("NVIDIA GeForce RTX 3050", None),
])
def test_accelerator_for_device_name(device_name, expected):
    found = accelerator_for_device(device_name)
    assert (found.name if found else None) == expected


def test_unknown_accelerator_names_the_choices():
    with pytest.raises(ConfigError, match="h100-sxm"):
        get_accelerator("tpu-v9")
