"""GGUF quantized weights: written through gguf.quants (q4_0, q4_1, q5_0, q5_1), read back by transformers and by us
(kept as the file's blocks; the K kinds and types kept nowhere: test_gguf_block_kinds.py); bad tensor types refused."""
import struct

import gguf
import pytest
import torch
from checkpoint_models import CONFIGS, random_model
from gguf import GGMLQuantizationType as GGML

from llamalab.checkpoint import load, save
from llamalab.checkpoint.gguf_header import read_header
from llamalab.cli.main import main
from llamalab.errors import CheckpointError
from llamalab.inference import load_model
from llamalab.quantize import Int4Linear
from llamalab.quantize.blocks import BlockEmbedding, BlockLinear

PROMPT = torch.tensor([[1, 5, 9, 200, 3, 77, 150, 2, 31, 64]])
# Largest logit error of the quantized file against the float model, relative to the largest logit. Measured on this
# random model: q4_0 0.16, q4_1 0.13, q5_0 0.074, q5_1 0.073, q8_0 0.010; a wrong block layout gives ~1.
QUANTIZATION_ERROR = {"q4_0": 0.25, "q4_1": 0.2, "q5_0": 0.12, "q5_1": 0.12, "q8_0": 0.02}


def relative_error(ours, theirs):
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


LOW_BIT = (GGML.Q4_0, GGML.Q4_1, GGML.Q5_0, GGML.Q5_1)


def file_type(name, ggml_type):
    """The type a matrix is written in: the embedding and the head stay Q8_0 under 4- and 5-bit types."""
    return GGML.Q8_0 if ggml_type in LOW_BIT and name in ("tok_embeddings.weight", "output.weight") else ggml_type


def gguf_round_trip(model, ggml_type):
    """The model with every matrix replaced by gguf.quants' own quantize → dequantize (norms stay float32)."""
    copy = random_model(model.args)
    with torch.no_grad():
        for name, p in copy.named_parameters():
            if p.dim() == 2:
                kind = file_type(name, ggml_type)
                p.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(p.numpy(), kind), kind)))
    return copy


@pytest.mark.parametrize("dtype", list(QUANTIZATION_ERROR))
def test_transformers_reads_our_quantized_gguf_as_gguf_quants_would_quantize_it(tmp_path, dtype):
    from transformers import AutoModelForCausalLM

    model = random_model(CONFIGS["gqa"])
    path = save(model, tmp_path / f"m-{dtype}.gguf", format="gguf", dtype=dtype)
    _, tensors = read_header(path)
    main = GGML[dtype.upper()]
    assert {t.tensor_type for t in tensors if t.name.startswith("blk.") and len(t.shape) == 2} == {main}
    assert {t.tensor_type for t in tensors if t.name in ("token_embd.weight", "output.weight")} == {
        file_type("output.weight", main)}
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(PROMPT).logits
        assert relative_error(gguf_round_trip(model, GGML[dtype.upper()])(PROMPT), theirs) < 1e-5
        assert relative_error(model(PROMPT), theirs) < QUANTIZATION_ERROR[dtype]
        assert relative_error(load(path)(PROMPT), theirs) < 1e-5  # kept quantized (q4/q8) or dequantized (q5)


@pytest.mark.parametrize("dtype", ["q4_0", "q4_1", "q8_0"])
def test_q4_and_q8_0_load_into_layers_reading_the_file_s_blocks(tmp_path, dtype):
    model = random_model(CONFIGS["llama3.1-scaled-tied-mqa"])
    path = save(model, tmp_path / "m.gguf", format="gguf", dtype=dtype)
    loaded = load(path)
    expected = gguf_round_trip(model, GGML[dtype.upper()])
    for name, module in loaded.named_modules():
        if isinstance(module, BlockLinear) and name != "tok_embeddings.table":
            assert module.kind == (dtype.upper() if name != "output" else "Q8_0"), name
            assert torch.equal(module.dequantize(), expected.get_submodule(name).weight), name
    assert isinstance(loaded.layers[0].attention.wq, BlockLinear)
    # the tied embedding and head: one Q8_0 table (written so under 4-bit types too), kept as blocks
    assert isinstance(loaded.output, BlockLinear) and loaded.output.kind == "Q8_0"
    assert isinstance(loaded.tok_embeddings, BlockEmbedding) and loaded.tok_embeddings.table is loaded.output
    with torch.no_grad():
        assert relative_error(loaded(PROMPT), expected(PROMPT)) < 1e-5


def test_bfloat16_keeps_int4_blocks_and_runs_the_int4_kernel(tmp_path):
    model = random_model(CONFIGS["gqa"])
    loaded = load(save(model, tmp_path / "m.gguf", format="gguf", dtype="q4_1"), dtype=torch.bfloat16)
    wq = loaded.layers[0].attention.wq
    assert isinstance(wq, Int4Linear) and wq.kernel_weight.numel() > 0 and loaded.norm.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert relative_error(loaded(PROMPT), gguf_round_trip(model, GGML.Q4_1)(PROMPT)) < 0.03


def test_keep_quantized_false_gives_plain_float_weights(tmp_path):
    model = random_model(CONFIGS["gqa"])
    loaded = load(save(model, tmp_path / "m.gguf", format="gguf", dtype="q4_0"), keep_quantized=False)
    assert all(type(m) in (torch.nn.Linear, torch.nn.Embedding) for m in loaded.modules() if not list(m.children())
               and hasattr(m, "weight") and m.weight.dim() == 2)
    expected = gguf_round_trip(model, GGML.Q4_0).layers[1].feed_forward.w2.weight
    assert torch.equal(loaded.layers[1].feed_forward.w2.weight, expected)


def test_quantize_int4_on_an_int4_file_does_not_round_again(tmp_path):
    model = random_model(CONFIGS["gqa"])
    path = save(model, tmp_path / "m.gguf", format="gguf", dtype="q4_0")
    loaded = load_model(path, device="cpu", quantize="int4").model
    expected = gguf_round_trip(model, GGML.Q4_0)
    for name in ("layers.0.attention.wq", "layers.1.feed_forward.w1", "output"):
        assert torch.equal(loaded.get_submodule(name).dequantize(), expected.get_submodule(name).weight), name


def _retype_first_matrix(path, type_id):
    """Rewrite the GGML type of the file's first matrix in its tensor directory (the bytes stay)."""
    _, tensors = read_header(path)
    first = next(t for t in tensors if len(t.shape) == 2)
    data = bytearray(path.read_bytes())
    name = first.name.encode()
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, type_id)
    path.write_bytes(bytes(data))
    return first.name


@pytest.mark.parametrize("type_id, named", [(GGML.I8.value, "I8"), (99, "GGML type 99")])
def test_a_tensor_type_we_cannot_read_is_one_line_naming_it_and_exit_2(tmp_path, capsys, type_id, named):
    path = save(random_model(CONFIGS["gqa"]), tmp_path / "m.gguf", format="gguf", dtype="q8_0")
    tensor = _retype_first_matrix(path, type_id)
    with pytest.raises(CheckpointError, match=f"{tensor}.*{named}|{tensor} has type {named}"):
        load(path)
    assert main(["convert", str(path), str(tmp_path / "out"), "--to", "native"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err and tensor in err


def test_gguf_block_types_are_refused_for_float_formats(tmp_path):
    with pytest.raises(CheckpointError, match="q4_1 is for gguf"):
        save(random_model(CONFIGS["gqa"]), tmp_path / "m", format="native", dtype="q4_1")
