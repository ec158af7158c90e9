import json

import pytest
import sentencepiece
import tiktoken

from llamalab.errors import ChatFormatError
from llamalab.tokenizer import (
    HFTokenizer,
    SentencePieceTokenizer,
    TiktokenTokenizer,
    encode_dialog,
    encode_llama2_dialog,
    encode_llama3_dialog,
    load_tokenizer,
)

DIALOG = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": " Hello! "},
    {"role": "user", "content": "  How are you?  "},
]
# Chat templates written here from the two published formats, in the style of HF tokenizer_config.json.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}{% set messages = messages[1:] %}"
    "{% else %}{% set system = '' %}{% endif %}"
    "{% for m in messages %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('roles must alternate') }}{% endif %}"
    "{% if m['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + ((system if loop.first else '') + m['content']) | trim + ' [/INST]' }}"
    "{% else %}{{ ' ' + m['content'] | trim + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def test_llama2_format_is_metas(sp_model_path):
    sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_model_path))
    expected = (
        [1] + sp.encode("[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi there [/INST] Hello! ") + [2]
        + [1] + sp.encode("[INST] How are you? [/INST]")
    )
    tok = SentencePieceTokenizer(sp_model_path)
    assert encode_llama2_dialog(tok, DIALOG) == expected
    assert encode_dialog(tok, DIALOG) == expected  # chosen from the tokenizer: no header tokens → Llama 2


def test_llama3_format_is_metas(llama3_sized_tiktoken_path, bpe_ranks, meta_llama3_pattern):
    plain = tiktoken.Encoding("ref", pat_str=meta_llama3_pattern, mergeable_ranks=bpe_ranks, special_tokens={}).encode
    expected = [128000]
    turns = [("system", "You are terse."), ("user", "Hi there"), ("assistant", "Hello!"), ("user", "How are you?")]
    for role, content in turns:
        expected += [128006] + plain(role) + [128007] + plain("\n\n") + plain(content) + [128009]
    expected += [128006] + plain("assistant") + [128007] + plain("\n\n")
    tok = TiktokenTokenizer(llama3_sized_tiktoken_path)
    assert encode_llama3_dialog(tok, DIALOG) == expected
    assert encode_dialog(tok, DIALOG) == expected  # chosen from the tokenizer: header tokens → Llama 3


def test_templates_of_the_formats_give_metas_ids(sp_model_path, tiktoken_model_path):
    """The Jinja path (rendered, then encoded with special tokens) reproduces the built-in formats."""
    llama2, llama3 = SentencePieceTokenizer(sp_model_path), TiktokenTokenizer(tiktoken_model_path)
    expected2, expected3 = encode_llama2_dialog(llama2, DIALOG), encode_llama3_dialog(llama3, DIALOG)
    llama2.chat_template, llama3.chat_template = LLAMA2_TEMPLATE, LLAMA3_TEMPLATE
    assert encode_dialog(llama2, DIALOG) == expected2
    assert encode_dialog(llama3, DIALOG) == expected3


@pytest.mark.parametrize("folder, template, bos, eos", [
    ("hf_llama2_dir", LLAMA2_TEMPLATE, "<s>", "</s>"),
    ("hf_llama3_dir", LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|end_of_text|>"),
])
def test_template_in_tokenizer_config_equals_transformers(request, tmp_path, folder, template, bos, eos):
    from transformers import PreTrainedTokenizerFast

    source = request.getfixturevalue(folder)
    (tmp_path / "tokenizer.json").write_bytes((source / "tokenizer.json").read_bytes())
    config = {"bos_token": bos, "eos_token": eos, "chat_template": template}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    reference = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"), bos_token=bos, eos_token=eos)
    reference.chat_template = template
    expected = reference.apply_chat_template(DIALOG, add_generation_prompt=True, tokenize=True)["input_ids"]
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, HFTokenizer) and tok.chat_template == template
    assert encode_dialog(tok, DIALOG) == expected


def test_a_stored_template_takes_precedence(tmp_path, sp_model_path):
    (tmp_path / "tokenizer.model").write_bytes(sp_model_path.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages[-1]['content'] }}!"}))
    tok = load_tokenizer(tmp_path)
    assert encode_dialog(tok, DIALOG) == tok.encode("  How are you?  !", bos=False)


@pytest.mark.parametrize("dialog, message", [
    ([], "empty"),
    ([{"role": "user"}], "'role' and 'content'"),
    ([{"role": "system", "content": "s"}], "needs a user message"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "alternating"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "must be the user's"),
])
def test_llama2_rejects_dialogs_it_cannot_express(sp_model_path, dialog, message):
    with pytest.raises(ChatFormatError, match=message):
        encode_dialog(SentencePieceTokenizer(sp_model_path), dialog)


def test_template_errors_and_sandbox_escapes_are_chat_format_errors(sp_model_path):
    tok = SentencePieceTokenizer(sp_model_path)
    tok.chat_template = LLAMA2_TEMPLATE
    with pytest.raises(ChatFormatError, match="roles must alternate"):
        encode_dialog(tok, [{"role": "assistant", "content": "x"}])
    tok.chat_template = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatFormatError, match="template"):
        encode_dialog(tok, DIALOG)
    tok.chat_template = "{% for %}"
    with pytest.raises(ChatFormatError, match="template"):
        encode_dialog(tok, DIALOG)
