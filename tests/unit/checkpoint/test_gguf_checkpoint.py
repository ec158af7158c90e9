"""GGUF files read back with gguf.GGUFReader (llama.cpp's own Python library): names, shapes, metadata, vocab."""
import base64
import json
import math

import gguf
import numpy as np
import pytest
import sentencepiece
import tokenizers
import torch
from checkpoint_models import CONFIGS, random_model
from gguf import GGMLQuantizationType as GGML
from tiktoken._educational import bpe_train
from transformers.convert_slow_tokenizer import TikTokenConverter

from llamalab.checkpoint import load, save
from llamalab.config import ModelArgs, RopeScaling
from llamalab.tokenizer import LLAMA3_SPECIAL_TOKENS, load_tokenizer

# Meta's Llama 3 pre-tokenizer pattern (llama3/tokenizer.py), written out as the oracle, not the package's copy
META_LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                       r"|\s*[\r\n]+|\s+(?!\S)|\s+")

LLAMA_CPP_NAMES = {  # llama.cpp's tensor names for the llama architecture, as in its convert scripts
    "tok_embeddings": "token_embd", "norm": "output_norm", "output": "output",
    "attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v", "attention.wo": "attn_output",
    "feed_forward.w1": "ffn_gate", "feed_forward.w3": "ffn_up", "feed_forward.w2": "ffn_down",
    "attention_norm": "attn_norm", "ffn_norm": "ffn_norm",
}


def llama_cpp_name(name):
    parts = name.removesuffix(".weight").split(".")
    if parts[0] == "layers":
        return f"blk.{parts[1]}.{LLAMA_CPP_NAMES['.'.join(parts[2:])]}.weight"
    return f"{LLAMA_CPP_NAMES[parts[0]]}.weight"


def field(reader, key):
    return reader.get_field(key).contents()


def test_tensors_have_llama_cpp_names_shapes_and_types(tmp_path):
    model = random_model(CONFIGS["gqa"])
    reader = gguf.GGUFReader(save(model, tmp_path / "m.gguf", format="gguf", dtype="q8_0"))
    tensors = {t.name: t for t in reader.tensors}
    params = dict(model.named_parameters())
    assert set(tensors) == {llama_cpp_name(n) for n in params}
    for name, p in params.items():
        t = tensors[llama_cpp_name(name)]
        assert tuple(t.shape) == tuple(reversed(p.shape))  # GGUF lists ne[0] (the contiguous dim) first
        assert t.tensor_type == (GGML.F32 if p.dim() == 1 else GGML.Q8_0)
    # Meta's interleaved q/k rows are what llama.cpp's llama arch rotates: stored unpermuted
    wq = gguf.quants.dequantize(tensors["blk.1.attn_q.weight"].data, GGML.Q8_0)
    assert np.allclose(wq, params["layers.1.attention.wq.weight"].numpy(), atol=0.01)


def test_metadata_is_llama_cpp_s_llama_keys(tmp_path):
    args = CONFIGS["llama3.1-scaled-tied-mqa"]
    reader = gguf.GGUFReader(save(random_model(args), tmp_path / "m.gguf", format="gguf"))
    expected = {
        "general.architecture": "llama", "general.file_type": 0, "llama.context_length": 64,
        "llama.embedding_length": 64, "llama.block_count": 2, "llama.feed_forward_length": 224,
        "llama.attention.head_count": 4, "llama.attention.head_count_kv": 1, "llama.rope.dimension_count": 16,
        "llama.rope.freq_base": 500000.0, "llama.vocab_size": 320,
    }
    assert {k: field(reader, k) for k in expected} == expected
    assert math.isclose(field(reader, "llama.attention.layer_norm_rms_epsilon"), 1e-5, rel_tol=1e-6)
    names = {t.name for t in reader.tensors}
    assert "output.weight" not in names  # tied: llama.cpp falls back to token_embd
    # Llama 3.1 scaling is llama.cpp's rope_freqs tensor, computed here as its convert_hf_to_gguf.py does
    freqs = 1.0 / (500000.0 ** (np.arange(0, 16, 2) / 16))
    low_wavelen, high_wavelen = 32 / 1.0, 32 / 4.0
    divisors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        smooth = (32 / wavelen - 1.0) / (4.0 - 1.0)
        middle = 1 / ((1 - smooth) / 8 + smooth)
        divisors.append(1.0 if wavelen < high_wavelen else 8.0 if wavelen > low_wavelen else middle)
    rope_freqs = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
    assert np.allclose(rope_freqs.data, divisors, rtol=1e-6)


def test_vocabulary_is_the_sentencepiece_model_s(tmp_path, sp_tokenizer):
    save(random_model(CONFIGS["gqa"]), tmp_path / "m.gguf", format="gguf", tokenizer=sp_tokenizer)
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_tokenizer))
    n = sp.vocab_size()
    assert field(reader, "tokenizer.ggml.model") == "llama"
    assert field(reader, "tokenizer.ggml.tokens") == [sp.id_to_piece(i) for i in range(n)]
    assert np.allclose(field(reader, "tokenizer.ggml.scores"), [sp.get_score(i) for i in range(n)])
    types = field(reader, "tokenizer.ggml.token_type")
    assert types[sp.unk_id()] == 2 and types[sp.bos_id()] == 3 and types[sp.eos_id()] == 3
    assert types[sp.piece_to_id("<0x41>")] == 6 and types[sp.encode("cat")[-1]] == 1
    assert (field(reader, "tokenizer.ggml.bos_token_id"), field(reader, "tokenizer.ggml.eos_token_id")) == (1, 2)


def test_reads_a_llama_cpp_llama31_file_without_our_keys(tmp_path):
    """A file as llama.cpp's converter writes it: Llama 3.1 scaling only as rope_freqs (head_dim 128, as released)."""
    args = ModelArgs(dim=256, n_layers=1, n_heads=2, vocab_size=32, hidden_dim=64, rope_theta=500000.0,
                     max_seq_len=64, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192), tie_embeddings=True)
    model = random_model(args)
    writer = gguf.GGUFWriter(tmp_path / "m.gguf", "llama")
    for add, value in ((writer.add_context_length, 64), (writer.add_embedding_length, 256), (writer.add_block_count, 1),
                       (writer.add_feed_forward_length, 64), (writer.add_head_count, 2), (writer.add_head_count_kv, 2),
                       (writer.add_rope_freq_base, 500000.0), (writer.add_layer_norm_rms_eps, 1e-5)):
        add(value)
    freqs = 1.0 / (500000.0 ** (np.arange(0, 128, 2, dtype=np.float32) / 128))
    wavelen = 2 * math.pi / freqs
    smooth = (8192 / wavelen - 1) / 3
    divisors = np.where(wavelen < 2048, 1.0, np.where(wavelen > 8192, 8.0, 1 / ((1 - smooth) / 8 + smooth)))
    writer.add_tensor("rope_freqs.weight", divisors.astype(np.float32))
    for name, p in model.named_parameters():
        writer.add_tensor(llama_cpp_name(name), p.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    loaded = load(tmp_path / "m.gguf")
    assert loaded.args.rope_scaling == args.rope_scaling
    tokens = torch.randint(0, 32, (1, 20))
    assert torch.equal(loaded(tokens), model(tokens))


@pytest.fixture(scope="module")
def llama3_tokenizers(tmp_path_factory):
    """A tiny Llama-3-style tokenizer as Meta ships it (tiktoken ranks); its tokenizer.json made by transformers."""
    folder = tmp_path_factory.mktemp("llama3-tok")
    numbers = ["5551234567 31415926 2718281828"] * 60  # frequent enough that digit pairs merge: "555", "123", ...
    text = " ".join(["the cat sat on the mat; naïve café owners sold 東京 bread in 2024!"] * 30 + numbers)
    ranks = bpe_train(text, 256 + 40, META_LLAMA3_PATTERN, visualise=None)
    by_rank = sorted(ranks.items(), key=lambda kv: kv[1])
    lines = [f"{base64.b64encode(token).decode()} {rank}" for token, rank in by_rank]
    (folder / "tokenizer.model").write_text("\n".join(lines) + "\n")
    (folder / "hf").mkdir()
    converter = TikTokenConverter(vocab_file=str(folder / "tokenizer.model"),
                                  extra_special_tokens=LLAMA3_SPECIAL_TOKENS)
    converter.converted().save(str(folder / "hf" / "tokenizer.json"))
    return folder / "tokenizer.model", load_tokenizer(folder / "tokenizer.model")


def test_llama3_vocabulary_is_byte_level_bpe_that_encodes_like_tiktoken(tmp_path, llama3_tokenizers):
    path, tiktoken_tok = llama3_tokenizers
    save(random_model(CONFIGS["gqa"].replace(vocab_size=tiktoken_tok.vocab_size)), tmp_path / "m.gguf",
         format="gguf", tokenizer=path)
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    tokens, merges = field(reader, "tokenizer.ggml.tokens"), field(reader, "tokenizer.ggml.merges")
    assert len(tokens) == tiktoken_tok.vocab_size and len(merges) == 40
    assert tokens[tiktoken_tok.bos_id] == "<|begin_of_text|>" and field(reader, "tokenizer.ggml.bos_token_id") == 296
    types = field(reader, "tokenizer.ggml.token_type")
    assert set(types[:296]) == {1} and set(types[296:]) == {3}
    # what llama.cpp does with these keys: byte-level BPE of the merges after Llama 3's split
    vocab, pairs = {t: i for i, t in enumerate(tokens)}, [tuple(m.split(" ")) for m in merges]
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, pairs))
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Split(tokenizers.Regex(META_LLAMA3_PATTERN), "isolated"),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    for text in ("the cat sat on the mat", "naïve café, 東京 2024!", "  spaces\n\nand 12345 digits",
                 "5551234567 31415 20242024 55512345675551234567"):  # long runs: split in threes, then merged
        assert bpe.encode(text).ids == tiktoken_tok.encode(text, bos=False)


def test_llama3_tokenizer_json_gives_the_same_gguf_vocabulary_as_the_tiktoken_file(tmp_path, llama3_tokenizers):
    path, tiktoken_tok = llama3_tokenizers
    model = random_model(CONFIGS["gqa"].replace(vocab_size=tiktoken_tok.vocab_size))
    readers = [gguf.GGUFReader(save(model, tmp_path / f"{i}.gguf", format="gguf", tokenizer=tok))
               for i, tok in enumerate((path, path.parent / "hf" / "tokenizer.json"))]
    for key in ("model", "tokens", "token_type", "bos_token_id", "eos_token_id"):
        assert field(readers[0], f"tokenizer.ggml.{key}") == field(readers[1], f"tokenizer.ggml.{key}"), key
    # transformers lists every split of a token as a merge, the tiktoken path only the one BPE takes
    spec = json.loads((path.parent / "hf" / "tokenizer.json").read_text())
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    assert field(readers[1], "tokenizer.ggml.merges") == merges
    assert set(field(readers[0], "tokenizer.ggml.merges")) <= set(field(readers[1], "tokenizer.ggml.merges"))
