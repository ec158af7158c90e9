"""Every loader fed mutated bytes and mutated headers of small valid files: it loads, or raises one of our errors,
within seconds and bounded memory."""
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import gguf
import pytest
from harness import COUNTS, bounded
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "checkpoint"))  # the header rewriters the unit tests use
from mutate import LLAMA2C_FIELDS, rewrite_gguf, rewrite_llama2c_header  # noqa: E402

from llamalab.checkpoint import load, save  # noqa: E402
from llamalab.errors import LlamalabError  # noqa: E402
from llamalab.tokenizer import load_tokenizer  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", 20))  # per format and kind of mutation (more: a longer hunt)
FILES = {  # format -> (save options, the files of it to mutate)
    "meta": (dict(format="meta"), ["params.json", "consolidated.00.pth"]),
    "hf": (dict(format="hf", shards=2), ["config.json", "model.safetensors.index.json",
                                         "model-00001-of-00002.safetensors"]),
    "native": (dict(format="native"), ["llamalab.json", "model.safetensors"]),
    "gguf": (dict(format="gguf", dtype="q8_0"), [""]),
    "llama2c": (dict(format="llama2c"), [""]),
    "llama2c-v2": (dict(format="llama2c", dtype="q8_0"), [""]),
}
SUFFIX = {"gguf": ".gguf", "llama2c": ".bin", "llama2c-v2": ".bin"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def pristine(tiny_model, tokenizer_file, tmp_path_factory):
    """format -> a valid checkpoint path of the tiny model (with its tokenizer)."""
    root = tmp_path_factory.mktemp("pristine")
    return {fmt: save(tiny_model, root / f"m-{fmt}{SUFFIX.get(fmt, '')}", tokenizer=tokenizer_file, **options)
            for fmt, (options, _) in FILES.items()}


def copy(path: Path, into: Path) -> Path:
    target = into / path.name
    (shutil.copytree if path.is_dir() else shutil.copy)(path, target)
    return target


def accepted_or_refused(path: Path, surface: str) -> None:
    """The contract: load returns a model or raises LlamalabError, in seconds and bounded memory."""
    COUNTS[surface] += 1
    with bounded(seconds=10):
        try:
            load(path)
        except LlamalabError:
            pass


def mutate_bytes(data: bytes, edits: list[tuple[float, bytes]], cut: float | None) -> bytes:
    out = bytearray(data)
    for where, payload in edits:
        i = int(where * len(out))
        out[i:i + len(payload)] = payload
    return bytes(out[: int(cut * len(out))] if cut is not None else out)


byte_edits = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=8)),
                      min_size=1, max_size=4)


@pytest.mark.parametrize("fmt", list(FILES))
@settings(settings.get_profile("fuzz"), max_examples=EXAMPLES)
@given(data=st.data())
def test_mutated_bytes(pristine, fmt, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = copy(pristine[fmt], Path(tmp))
        target = path / data.draw(st.sampled_from(FILES[fmt][1])) if path.is_dir() else path
        cut = data.draw(st.none() | st.floats(0, 1, exclude_max=True))
        target.write_bytes(mutate_bytes(target.read_bytes(), data.draw(byte_edits), cut))
        accepted_or_refused(path, f"loader bytes {fmt}")


CONFIG_FILES = {"meta": "params.json", "hf": "config.json", "native": "llamalab.json"}


@pytest.mark.parametrize("fmt", list(CONFIG_FILES))
@settings(settings.get_profile("fuzz"), max_examples=EXAMPLES)
@given(data=st.data())
def test_mutated_json_headers(pristine, fmt, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = copy(pristine[fmt], Path(tmp))
        config = json.loads((path / CONFIG_FILES[fmt]).read_text())
        fields = config["model_args"] if fmt == "native" else config
        for key in data.draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3)):
            fields[key] = data.draw(json_values)
        (path / CONFIG_FILES[fmt]).write_text(json.dumps(config))
        accepted_or_refused(path, f"loader header {fmt}")


@settings(settings.get_profile("fuzz"), max_examples=EXAMPLES)
@given(fields=st.dictionaries(st.sampled_from(LLAMA2C_FIELDS), st.integers(-(2**31), 2**31 - 1), min_size=1))
def test_mutated_llama2c_headers(pristine, fields):
    with tempfile.TemporaryDirectory() as tmp:
        path = copy(pristine["llama2c"], Path(tmp))
        rewrite_llama2c_header(path, **fields)
        accepted_or_refused(path, "loader header llama2c")


GGUF_KEYS = ["llama.block_count", "llama.embedding_length", "llama.feed_forward_length", "llama.attention.head_count",
             "llama.attention.head_count_kv", "llama.context_length", "llama.rope.freq_base", "llama.vocab_size",
             "llama.attention.layer_norm_rms_epsilon", "general.architecture"]
V = gguf.GGUFValueType
gguf_values = (st.tuples(st.integers(0, 2**32 - 1), st.just(V.UINT32)) | st.tuples(st.integers(-(2**31), 2**31 - 1),
               st.just(V.INT32)) | st.tuples(st.floats(width=32), st.just(V.FLOAT32))
               | st.tuples(st.text(max_size=6), st.just(V.STRING)) | st.tuples(st.booleans(), st.just(V.BOOL))
               | st.tuples(st.none(), st.just(V.UINT32)))  # None: the key removed


@pytest.fixture(scope="module")
def gguf_f32(tiny_model, tokenizer_file, tmp_path_factory):
    return save(tiny_model, tmp_path_factory.mktemp("gguf") / "m.gguf", format="gguf", dtype="float32",
                tokenizer=tokenizer_file)


@settings(settings.get_profile("fuzz"), max_examples=EXAMPLES)
@given(changes=st.dictionaries(st.sampled_from(GGUF_KEYS), gguf_values, min_size=1, max_size=3))
def test_mutated_gguf_metadata(gguf_f32, changes):
    with tempfile.TemporaryDirectory() as tmp:
        accepted_or_refused(rewrite_gguf(gguf_f32, Path(tmp) / "m.gguf", changes), "loader header gguf")


TOKENIZER_FILES = ["tokenizer.model", "tokenizer.json"]


@pytest.fixture(scope="module")
def tokenizer_files(pristine, tmp_path_factory):
    """A SentencePiece .model and an HF tokenizer.json (converted from it by transformers)."""
    from transformers import LlamaTokenizerFast

    root = tmp_path_factory.mktemp("tokenizers")
    shutil.copy(pristine["meta"] / "tokenizer.model", root / "tokenizer.model")
    LlamaTokenizerFast(vocab_file=str(root / "tokenizer.model")).backend_tokenizer.save(str(root / "tokenizer.json"))
    return root


@pytest.mark.parametrize("name", TOKENIZER_FILES)
@settings(settings.get_profile("fuzz"), max_examples=EXAMPLES)
@given(data=st.data())
def test_mutated_tokenizer_files(tokenizer_files, name, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        original = (tokenizer_files / name).read_bytes()
        cut = data.draw(st.none() | st.floats(0, 1, exclude_max=True))
        path.write_bytes(mutate_bytes(original, data.draw(byte_edits), cut))
        COUNTS[f"tokenizer {name}"] += 1
        with bounded(seconds=10):
            try:
                tokenizer = load_tokenizer(path)
                tokenizer.decode(tokenizer.encode("the cat sat"))
            except LlamalabError:
                pass
