"""The sampler settings a model recommends: generation_config.json beside an HF tokenizer, general.sampling.* in a
GGUF; `llamalab generate` / `chat` use them for every flag the user did not give."""
import argparse
import json
import shutil

import gguf

from llamalab.cli.common import add_sampling_arguments, sampling_params
from llamalab.tokenizer import load_tokenizer


def parsed(*argv):
    parser = argparse.ArgumentParser()
    add_sampling_arguments(parser)
    return parser.parse_args(list(argv))


def test_generation_config_gives_the_defaults_and_flags_override_them(tmp_path, hf_llama3_dir):
    shutil.copytree(hf_llama3_dir, tmp_path / "m")
    (tmp_path / "m" / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 0.2, "top_p": 0.5, "top_k": 7, "eos_token_id": [0, 5]}))
    tok = load_tokenizer(tmp_path / "m")
    assert tok.sampling_defaults == {"temperature": 0.2, "top_p": 0.5, "top_k": 7}
    assert {0, 5} <= tok.stop_ids
    chosen = sampling_params(parsed("--top-p", "0.8"), 0, tok.sampling_defaults)
    assert (chosen.temperature, chosen.top_p, chosen.top_k, chosen.min_p) == (0.2, 0.8, 7, 0.0)
    (tmp_path / "m" / "generation_config.json").write_text(json.dumps({"do_sample": False, "temperature": 0.9}))
    assert sampling_params(parsed(), 0, load_tokenizer(tmp_path / "m").sampling_defaults).temperature == 0.0


def test_without_recommendations_the_defaults_are_meta_s():
    chosen = sampling_params(parsed(), 0, {})
    assert (chosen.temperature, chosen.top_p, chosen.top_k, chosen.min_p) == (0.6, 0.9, None, 0.0)


def test_gguf_sampling_keys_are_the_defaults(tmp_path, tiktoken_model_path):
    from llamalab.checkpoint import save
    from llamalab.config import ModelArgs
    from llamalab.model import Transformer
    from llamalab.tokenizer.gguf_metadata import read_gguf_metadata

    model = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=592, multiple_of=16, max_seq_len=32))
    source = read_gguf_metadata(save(model, tmp_path / "a.gguf", format="gguf", tokenizer=tiktoken_model_path))
    writer = gguf.GGUFWriter(tmp_path / "b.gguf", "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list(source["tokenizer.ggml.tokens"])
    writer.add_token_types(source["tokenizer.ggml.token_type"])
    writer.add_token_merges(source["tokenizer.ggml.merges"])
    writer.add_float32("general.sampling.temp", 0.25)
    writer.add_float32("general.sampling.top_p", 0.75)
    writer.add_int32("general.sampling.top_k", 20)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tok = load_tokenizer(tmp_path / "b.gguf")
    assert tok.sampling_defaults == {"temperature": 0.25, "top_p": 0.75, "top_k": 20}
    assert (tok.bos_id, tok.add_bos, tok.chat_template) == (None, False, None)  # none of those keys in the file



def test_add_bos_token_of_tokenizer_config_is_honoured(tmp_path, hf_llama2_dir, sp_model_path):
    """A Llama tokenizer adds BOS unless tokenizer_config.json says add_bos_token: false (transformers 5 itself
    adds none for this folder whatever the flag says, so the ids are checked against sentencepiece)."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_model_path))
    for flag in (None, True, False):
        folder = tmp_path / str(flag)
        shutil.copytree(hf_llama2_dir, folder)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        if flag is not None:
            config["add_bos_token"] = flag
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        ours = load_tokenizer(folder)
        assert ours.add_bos is (flag is not False)
        for text in ("the cat sat", "a café in 東京"):
            assert ours.encode(text) == [1] * ours.add_bos + sp.encode(text), (flag, text)
            assert ours.encode(text, bos=True)[0] == 1
