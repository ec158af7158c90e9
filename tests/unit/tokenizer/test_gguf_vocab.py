"""GGUF vocabularies: written by our GGUF writer, read back, and checked against sentencepiece, tiktoken and a direct
reading of llama.cpp's pre-tokenizer regexes; bad files are one clear error."""
import random

import regex
import sentencepiece
import tiktoken
import torch

from llamalab.checkpoint import save
from llamalab.checkpoint.vocab import byte_level
from llamalab.cli.main import main
from llamalab.config import ModelArgs
from llamalab.model import Transformer
from llamalab.tokenizer import LLAMA3_SPECIAL_TOKENS, load_tokenizer
from llamalab.tokenizer.gguf_metadata import read_gguf_metadata
from llamalab.tokenizer.gguf_vocab import GGUFBPETokenizer, GGUFSentencePieceTokenizer
from llamalab.tokenizer.tiktoken_bpe import read_bpe_ranks

EDGE_TEXTS = ["", " ", "  two spaces", "trailing  ", "a\n\nb\tc", "東京 😀 café", "123456789 0.5", "I'M it's",
              "unseen ĳ ǅ Ω ß", "<s>literal</s>", "x" * 50]
# llama-vocab.cpp's regex lists, copied here independently of the package's table
LLAMA_CPP_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA_CPP_REGEXES = {
    "default": [r"[\p{P}\$\+<=>\^~\|]+", LLAMA_CPP_GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
    "gpt-2": [LLAMA_CPP_GPT2],
    "smollm": [r"\p{N}", LLAMA_CPP_GPT2],
    "llama-bpe": [r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
}


def tiny_model(vocab_size: int) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=vocab_size, multiple_of=16, max_seq_len=32))


def test_sentencepiece_vocabulary_in_our_gguf_encodes_like_sentencepiece(sample_texts, tmp_path, sp_model_path):
    path = save(tiny_model(400), tmp_path / "m.gguf", format="gguf", tokenizer=sp_model_path)
    tok = load_tokenizer(path)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_model_path))
    assert isinstance(tok, GGUFSentencePieceTokenizer)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == (400, 1, 2, None, True)
    for text in sample_texts(300, seed=3) + EDGE_TEXTS:
        assert tok.encode(text) == [1] + sp.encode(text), text
        assert tok.decode(tok.encode(text)) == sp.decode(sp.encode(text))


def test_tiktoken_vocabulary_in_our_gguf_encodes_like_tiktoken(sample_texts, tmp_path, tiktoken_model_path,
                                                                 meta_llama3_pattern):
    ranks = read_bpe_ranks(tiktoken_model_path)
    specials = {t: len(ranks) + i for i, t in enumerate(LLAMA3_SPECIAL_TOKENS)}
    reference = tiktoken.Encoding("ref", pat_str=meta_llama3_pattern, mergeable_ranks=ranks, special_tokens=specials)
    path = save(tiny_model(reference.n_vocab), tmp_path / "m.gguf", format="gguf", tokenizer=tiktoken_model_path)
    tok = load_tokenizer(path)
    assert isinstance(tok, GGUFBPETokenizer) and tok.pre == "llama-bpe"
    assert tok.stop_ids == {specials["<|end_of_text|>"], specials["<|eot_id|>"]} and tok.add_bos
    assert read_gguf_metadata(path)["tokenizer.ggml.eot_token_id"] == specials["<|eot_id|>"]
    for text in sample_texts(300, seed=4) + EDGE_TEXTS + ["<|eot_id|> and <|start_header_id|>user"]:
        assert tok.encode(text, bos=False) == reference.encode(text, disallowed_special=()), text
        assert tok.encode(text, allow_special=True)[1:] == reference.encode(text, allowed_special="all"), text
        assert tok.decode(tok.encode(text, bos=False)) == text


def llama_cpp_split(text: str, regexes: list[str]) -> list[str]:
    """llama.cpp's unicode_regex_split: each regex cuts every piece into its matches and the text between them."""
    pieces = [text]
    for pattern in regexes:
        cut = []
        for piece in pieces:
            start = 0
            for match in regex.finditer(pattern, piece):
                cut += [piece[start:match.start()]] if match.start() > start else []
                cut += [match.group()] if match.end() > match.start() else []
                start = match.end()
            cut += [piece[start:]] if start < len(piece) else []
        pieces = cut
    return pieces


def mixed_strings(n: int, seed: int = 0) -> list[str]:
    """Words, digit runs, punctuation runs, contractions and whitespace runs of every kind, shuffled together."""
    rng = random.Random(seed)
    parts = ["Hello", "world", "東京", "😀", "naïve", "I'm", "THEY'LL", "'s", "1", "12", "123", "1234567", "٣٤",
             "½", "3.14", "!!", "...", "$", "+=", "<=>", "^~|", "(x)", "`a`", " ", "  ", "   ", "\n", "\n\n", " \n",
             "\t", "\r\n", "\u00a0", "é", "e\u0301", "-", "_", "#"]
    return ["".join(rng.choice(parts) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def test_pre_tokenizers_split_text_as_llama_cpp_s_regexes(tmp_path, tiktoken_model_path):
    path = save(tiny_model(336 + 256), tmp_path / "m.gguf", format="gguf", tokenizer=tiktoken_model_path)
    metadata = read_gguf_metadata(path)
    texts = mixed_strings(400) + EDGE_TEXTS
    for name, regexes in LLAMA_CPP_REGEXES.items():
        tok = GGUFBPETokenizer(path, {**metadata, "tokenizer.ggml.pre": name})
        for text in texts:
            pieces = [piece for piece, _ in tok.model.pre_tokenizer.pre_tokenize_str(text)]
            assert pieces == [byte_level(p.encode()) for p in llama_cpp_split(text, regexes)], (name, text)


def test_unknown_pre_tokenizer_and_missing_vocabulary_are_one_line_errors(tmp_path, tiktoken_model_path, capsys):
    good = save(tiny_model(336 + 256), tmp_path / "good.gguf", format="gguf", tokenizer=tiktoken_model_path)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(good.read_bytes().replace(b"llama-bpe", b"llama-xyz", 1))  # same length: the file stays valid
    bare = save(tiny_model(64), tmp_path / "bare.gguf", format="gguf")
    for argv, message in [
        (["tokenizer", "encode", str(bad), "hi"], "unknown GGUF pre-tokenizer 'llama-xyz'"),
        (["generate", str(bad), "--prompt", "hi", "--max-new-tokens", "2"], "unknown GGUF pre-tokenizer 'llama-xyz'"),
        (["tokenizer", "encode", str(bare), "hi"], "has no vocabulary"),
        (["generate", str(bare), "--prompt", "hi", "--max-new-tokens", "2"], "needs a tokenizer"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


CHATML = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
          "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def test_our_gguf_loads_in_transformers_with_its_text(sample_texts, tmp_path, tiktoken_model_path, sp_model_path):
    from transformers import AutoTokenizer

    source = tmp_path / "tok"
    source.mkdir()
    (source / "tokenizer.model").write_bytes(tiktoken_model_path.read_bytes())
    (source / "chat_template.jinja").write_text(CHATML)
    bpe = save(tiny_model(336 + 256), tmp_path / "bpe" / "m.gguf", format="gguf", tokenizer=source / "tokenizer.model")
    spm = save(tiny_model(400), tmp_path / "spm" / "m.gguf", format="gguf", tokenizer=sp_model_path)
    hf_bpe = AutoTokenizer.from_pretrained(bpe.parent, gguf_file=bpe.name)
    hf_spm = AutoTokenizer.from_pretrained(spm.parent, gguf_file=spm.name)
    ours = load_tokenizer(bpe)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_model_path))
    assert hf_bpe.chat_template == CHATML == ours.chat_template
    assert (hf_bpe.bos_token, hf_bpe.eos_token) == ("<|begin_of_text|>", "<|end_of_text|>")
    dialog = [{"role": "user", "content": "the cat 2024"}]
    assert hf_bpe.apply_chat_template(dialog, add_generation_prompt=True, return_dict=False) == \
        ours.encode(hf_bpe.apply_chat_template(dialog, add_generation_prompt=True, tokenize=False), bos=False,
                    allow_special=True)
    for text in sample_texts(200, seed=5) + EDGE_TEXTS[1:]:
        assert hf_bpe.encode(text) == ours.encode(text), text  # both add <|begin_of_text|>
        # (transformers' Metaspace adds no dummy "▁" before leading spaces, see test_hf.py; it reads "<s>" as BOS)
        if not text.startswith(" ") and "<s>" not in text:
            assert hf_spm.encode(text) == [1] + sp.encode(text), text


def test_a_gguf_tokenizer_converted_to_a_folder_is_the_same_tokenizer_in_transformers(sample_texts, tmp_path,
                                                                                      tiktoken_model_path):
    from transformers import AutoTokenizer

    source = tmp_path / "tok"
    source.mkdir()
    (source / "tokenizer.model").write_bytes(tiktoken_model_path.read_bytes())
    (source / "chat_template.jinja").write_text(CHATML)
    gguf_file = save(tiny_model(336 + 256), tmp_path / "m.gguf", format="gguf", tokenizer=source / "tokenizer.model")
    folder = save(tiny_model(336 + 256), tmp_path / "hf", format="hf", tokenizer=gguf_file)
    ours, hf = load_tokenizer(gguf_file), AutoTokenizer.from_pretrained(folder)
    assert hf.chat_template == CHATML and (hf.bos_token, hf.eos_token) == ("<|begin_of_text|>", "<|end_of_text|>")
    again = load_tokenizer(folder)
    assert (again.add_bos, again.stop_ids, again.chat_template) == (True, ours.stop_ids, CHATML)
    for text in sample_texts(200, seed=6) + EDGE_TEXTS[1:] + ["<|eot_id|>x"]:
        assert hf.encode(text) == ours.encode(text, allow_special=True) == again.encode(text, allow_special=True)
