"""torch.compile's caches in a folder the user places: a second process compiles from them, and the portable file
alone brings them to a fresh folder (another machine)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from llamalab.errors import OutputError
from llamalab.generate.compile_cache import SUFFIX, use_compile_cache

COMPILE = """
import json, sys
from torch._dynamo.utils import counters
from llamalab import load_model
load_model("debug", random_init=True, seed=0, compile=True, compile_cache=sys.argv[1]).decode_step(1, 16)
print(json.dumps(dict(counters["inductor"])))
"""


def compile_in_a_new_process(folder) -> dict:
    """Inductor's counters of a process that compiles the debug model's decode step with `folder` as its cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    out = subprocess.run([sys.executable, "-c", COMPILE, str(folder)], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_compiles_from_the_cache_folder_and_its_portable_file(tmp_path):
    first = compile_in_a_new_process(tmp_path / "a")
    assert first.get("fxgraph_cache_miss", 0) >= 1 and not first.get("fxgraph_cache_hit")
    (artifacts,) = (tmp_path / "a").glob(f"*{SUFFIX}")
    assert compile_in_a_new_process(tmp_path / "a").get("fxgraph_cache_hit", 0) >= 1
    (tmp_path / "b").mkdir()
    shutil.copy(artifacts, tmp_path / "b")  # the file alone, as carried to a fresh machine
    carried = compile_in_a_new_process(tmp_path / "b")
    assert carried.get("fxgraph_cache_hit", 0) >= 1 and not carried.get("fxgraph_cache_miss")


def test_an_unwritable_cache_folder_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="not writable"):
        use_compile_cache(tmp_path / "file" / "cache")
