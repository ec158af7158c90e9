"""Memory of a float model loaded from safetensors: loading it with `load_model` and decoding a few tokens raises the
process's peak RSS by at most 1.3x the file (issue 18): the weights are the file's mapped pages, and a weight re-laid
out or cast gives its pages back (checkpoint/mapped.py), so no weight is resident twice."""
import os
import subprocess
import sys

import pytest
import torch

from llamalab.checkpoint import save
from llamalab.config import ModelArgs
from llamalab.model import Transformer

ARGS = ModelArgs(dim=640, n_layers=6, n_heads=10, n_kv_heads=5, vocab_size=8000, multiple_of=64, max_seq_len=256)
# SmolLM2's proportions: the tied embedding / head is over half the file, so one transient copy of it breaks 1.3x
TIED = ModelArgs(dim=512, n_layers=4, n_heads=8, n_kv_heads=4, vocab_size=32000, multiple_of=64, max_seq_len=256,
                 tie_embeddings=True)

SCRIPT = """
import os, sys
import torch
from llamalab.config import ModelArgs
from llamalab.generate.decode import Generation
from llamalab.generate.sampling import SamplingParams
from llamalab.inference import load_model
torch.set_num_threads(1)
warm = load_model(ModelArgs.from_preset("debug"), random_init=True, dtype=sys.argv[2])  # the code paths, touched once
list(Generation(warm.model, [[1, 2, 3]], 3, SamplingParams(temperature=0), step=warm.decode_step()))
del warm
status = lambda key: next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
before = status("VmRSS:")
loaded = load_model(sys.argv[1], dtype=sys.argv[2])
list(Generation(loaded.model, [[5, 6, 7, 8]], 6, SamplingParams(temperature=0), step=loaded.decode_step()))
print(type(loaded.decode_step()).__name__, status("VmHWM:") - before)  # VmHWM: this process's own peak
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A 37.5M-parameter model saved in float32 (150 MB) and bfloat16 (75 MB); a tied 28M one in bfloat16 (56 MB)."""
    torch.manual_seed(0)
    folders = {}
    for name, args, dtype in (("float32", ARGS, "float32"), ("bfloat16", ARGS, "bfloat16"),
                              ("tied bfloat16", TIED, "bfloat16")):
        model = Transformer(args).eval()
        folders[name] = save(model, tmp_path_factory.mktemp(dtype) / "model", format="native", dtype=dtype)
    return folders


def peak_growth(folder, dtype: str, **env) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(folder), dtype], check=True, capture_output=True,
                         text=True, env=os.environ | env).stdout.split()
    return out[-2], int(out[-1])


@pytest.mark.parametrize(("checkpoint", "env", "step"), [
    ("float32", {}, "NativeStep"),  # the C decode step reads the mapped row-major weights
    ("float32", {"LLAMALAB_NO_KERNELS": "1"}, "function"),  # no C compiler: column-major copies, pages given back
    ("bfloat16", {}, "function"),  # PyTorch's bfloat16 products on the mapped weights
    ("tied bfloat16", {}, "function"),  # the prefill's last-position head product: no copy of the 33 MB weight
], ids=["float32 C step", "float32 without the C kernels", "bfloat16", "tied bfloat16"])
def test_safetensors_model_peaks_within_1_3x_its_file(checkpoints, checkpoint, env, step):
    dtype = checkpoint.split()[-1]
    size = os.path.getsize(checkpoints[checkpoint] / "model.safetensors")
    used_step, grown = peak_growth(checkpoints[checkpoint], dtype, **env)
    assert used_step == step
    assert grown <= 1.3 * size, f"peak RSS grew {grown / 2**20:.0f} MB for a {size / 2**20:.0f} MB file"
