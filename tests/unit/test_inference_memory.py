"""Memory of a kept-quantized GGUF model: loading SmolLM2's Q4_1 file and decoding a few tokens takes little more than
the file's own pages above what the imports and PyTorch's own code take (the blocks are read where they lie in the
mapped file: no copy of the weights anywhere)."""
import os
import subprocess
import sys

SCRIPT = """
import os, sys
import torch
from llamalab.checkpoint import load
from llamalab.generate.decode import Generation
from llamalab.generate.sampling import SamplingParams
from llamalab.inference import prepare_for_inference
from llamalab.config import ModelArgs
from llamalab.model import Transformer
torch.set_num_threads(1)
warm = Transformer(ModelArgs.from_preset("debug")).eval()  # the library code a model and a generation touch
list(Generation(warm, [[1, 2, 3]], 2, SamplingParams(temperature=0)))
del warm
before = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")  # resident bytes now
model = prepare_for_inference(load(sys.argv[1]))
list(Generation(model, [[504, 3458, 282, 4649, 314]], 4, SamplingParams(temperature=0)))
# VmHWM is this process's own peak: ru_maxrss also counts the parent's pages the child held between fork and exec
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(peak - before)
"""


def test_smollm2_q4_1_loads_and_decodes_within_1_25x_its_file_size(smollm2_gguf):
    """Measured 1.02x (the file's pages, read once, and ~2 MB); copies of the blocks in our own int4 / int8 layout made
    it 1.9x, and a float32 copy of the 135M weights alone would be 540 MB, 5.5x the 98 MB file."""
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(smollm2_gguf)], check=True, capture_output=True, text=True)
    grown = int(out.stdout.split()[-1])
    assert grown <= 1.25 * os.path.getsize(smollm2_gguf), f"peak RSS grew {grown / 2**20:.0f} MB"
