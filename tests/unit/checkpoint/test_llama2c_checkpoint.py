"""llama2.c .bin files and tokenizer.bin, parsed here with struct/numpy from llama2.c's documented layouts."""
import struct

import numpy as np
import pytest
import sentencepiece
import torch
from checkpoint_models import CONFIGS, random_model

from llamalab.checkpoint import load, save
from llamalab.model import rope_tables


def read_floats(data: bytes, offset: int, n: int) -> tuple[np.ndarray, int]:
    return np.frombuffer(data, dtype="<f4", count=n, offset=offset), offset + 4 * n


@pytest.mark.parametrize("tied", [False, True])
def test_legacy_file_is_run_c_s_layout_and_keeps_gqa(tmp_path, tied):
    args = CONFIGS["gqa"].replace(tie_embeddings=tied)
    model = random_model(args)
    data = save(model, tmp_path / "m.bin", format="llama2c").read_bytes()
    header = struct.unpack_from("<7i", data)
    hidden = args.ffn_hidden_dim
    # a positive vocab_size means the classifier is the embedding; n_kv_heads=2 survives (GQA kept)
    assert header == (64, hidden, 2, 4, 2, 320 if tied else -320, 64)
    offset = 28
    emb, offset = read_floats(data, offset, 320 * 64)
    assert np.array_equal(emb.reshape(320, 64), model.tok_embeddings.weight.numpy())
    offset += 4 * 2 * 64  # attention norms of both layers
    wq0, offset = read_floats(data, offset, 64 * 64)
    assert np.array_equal(wq0.reshape(64, 64), model.layers[0].attention.wq.weight.numpy())
    wq1, offset = read_floats(data, offset, 64 * 64)
    assert np.array_equal(wq1.reshape(64, 64), model.layers[1].attention.wq.weight.numpy())
    # wk, wv (2 kv heads x 16), wo, ffn norms, w1, w2, w3, final norm
    offset += 4 * (2 * 2 * 32 * 64 + 2 * 64 * 64 + 2 * 64 + 3 * 2 * hidden * 64 + 64)
    cos, sin = rope_tables(16, 64, 10000.0)
    table, offset = read_floats(data, offset, 64 * 8)
    assert np.allclose(table.reshape(64, 8), cos.numpy())
    table, offset = read_floats(data, offset, 64 * 8)
    assert np.allclose(table.reshape(64, 8), sin.numpy())
    if not tied:
        out, offset = read_floats(data, offset, 320 * 64)
        assert np.array_equal(out.reshape(320, 64), model.output.weight.numpy())
    assert offset == len(data)


def test_version1_header_is_256_bytes_with_magic_and_norms_first(tmp_path):
    model = random_model(CONFIGS["gqa"])
    data = save(model, tmp_path / "m.bin", format="llama2c", version=1).read_bytes()
    magic, version = struct.unpack_from("<Ii", data)
    assert (magic, version) == (0x616B3432, 1) and data[:4] == b"24ka"  # "ak42" as a little-endian uint32
    assert struct.unpack_from("<7iB", data, 8) == (64, 192, 2, 4, 2, 320, 64, 0)
    assert data[37:256] == bytes(219)
    norm0, _ = read_floats(data, 256, 64)
    assert np.array_equal(norm0, model.layers[0].attention_norm.weight.numpy())
    assert len(data) == 256 + 4 * sum(p.numel() for p in model.parameters())


def test_version2_holds_int8_groups_with_float32_scales(tmp_path):
    model = random_model(CONFIGS["gqa"])
    data = save(model, tmp_path / "m.bin", format="llama2c", dtype="q8_0").read_bytes()
    assert struct.unpack_from("<Ii7iBi", data) == (0x616B3432, 2, 64, 192, 2, 4, 2, 320, 64, 0, 64)
    n_norms = 2 * 2 * 64 + 64
    offset = 256 + 4 * n_norms
    emb = model.tok_embeddings.weight.reshape(-1, 64)  # (groups, 64)
    q = np.frombuffer(data, dtype=np.int8, count=emb.numel(), offset=offset).reshape(-1, 64)
    scale = np.frombuffer(data, dtype="<f4", count=emb.shape[0], offset=offset + emb.numel())
    assert np.allclose(scale, emb.abs().amax(1).numpy() / 127)
    assert np.abs(q).max() == 127
    assert np.allclose(q * scale[:, None], emb.numpy(), atol=float(scale.max()) / 2 * 1.0001)
    matrices = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2)
    assert len(data) == 256 + 4 * n_norms + matrices + 4 * matrices // 64


def test_reads_all_three_versions_to_the_same_model(tmp_path):
    model = random_model(CONFIGS["llama2-mha"])
    tokens = torch.randint(0, 320, (1, 10))
    logits = [load(save(model, tmp_path / f"v{v}.bin", format="llama2c", version=v))(tokens) for v in (0, 1)]
    assert torch.equal(logits[0], logits[1])


def test_tokenizer_bin_is_llama2c_s_export_of_the_sentencepiece_model(tmp_path, sp_tokenizer):
    model = random_model(CONFIGS["gqa"])
    save(model, tmp_path / "out" / "m.bin", format="llama2c", tokenizer=sp_tokenizer)
    data = (tmp_path / "out" / "tokenizer.bin").read_bytes()
    sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_tokenizer))
    (max_len,), offset = struct.unpack_from("<I", data), 4
    tokens = []
    for i in range(sp.vocab_size()):
        score, length = struct.unpack_from("<fi", data, offset)
        token = data[offset + 8:offset + 8 + length]
        offset += 8 + length
        assert score == np.float32(sp.get_score(i))
        tokens.append(token)
    assert offset == len(data)
    assert max_len == max(len(t) for t in tokens)
    assert tokens[sp.bos_id()] == b"\n<s>\n" and tokens[sp.eos_id()] == b"\n</s>\n"
    assert tokens[sp.piece_to_id("<0x0A>")] == b"<0x0A>"  # run.c turns byte pieces into their byte itself
    word = sp.encode("cat")[-1]
    assert tokens[word] == sp.id_to_piece(word).replace("\u2581", " ").encode()
