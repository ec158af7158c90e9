"""dtype "auto": bfloat16 autocast exactly where the CPU multiplies bfloat16 natively, float32 elsewhere."""
from pathlib import Path

import pytest
import torch

from llamalab.errors import ConfigError
from llamalab.train.config import TrainConfig
from llamalab.train.trainer import resolve_dtype


def cpu_flags() -> set[str]:
    """The CPU feature flags the Linux kernel reports (independent of torch's own detection)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the Linux CPU flags")
def test_auto_is_bfloat16_on_cpus_with_native_bfloat16_matmuls():
    native = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert resolve_dtype("auto", torch.device("cpu")) == ("bfloat16" if native else "float32")


def test_an_explicit_dtype_is_kept_and_auto_is_the_default():
    assert TrainConfig().dtype == "auto"
    for name in ("float32", "bfloat16", "float16"):
        assert resolve_dtype(name, torch.device("cpu")) == name
    with pytest.raises(ConfigError, match="dtype must be one of auto, float32"):
        TrainConfig(dtype="fp8")


def test_training_step_runs_under_the_resolved_autocast(tiny_config):
    from llamalab.train.trainer import build_trainer

    trainer = build_trainer(tiny_config(dtype="bfloat16"), torch.device("cpu"))
    seen = []
    w1 = trainer.model.layers[0].feed_forward.w1
    hook = w1.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    loss = trainer.train_step()
    hook.remove()
    assert seen == [torch.bfloat16] and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # the weights stay float32
