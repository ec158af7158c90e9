"""Text generation: deltas concatenate to the decoded tokens; stop strings cut the text; Meta's API shapes."""
import time

import pytest
import torch
from generate_models import peaked_model, train_tiny_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from llamalab.generate.decode import Generation
from llamalab.generate.sampling import SamplingParams
from llamalab.generate.text import (
    TextStream,
    chat_completion,
    chat_generation,
    fit_dialog,
    stream_text,
    text_completion,
)
from llamalab.tokenizer import encode_dialog, load_tokenizer

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(train_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.model"))


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)  # module fixtures are built before the per-test seed: without this, test order decides
    return peaked_model(vocab_size=tokenizer.vocab_size, max_seq_len=128)


def run_stream(model, tokenizer, prompts, n, stop=(), sampling=GREEDY):
    generation = Generation(model, [tokenizer.encode(p) for p in prompts], n, sampling, stop_ids=tokenizer.stop_ids)
    pieces = [[] for _ in prompts]
    for deltas in stream_text(generation, tokenizer, stop):
        for row, d in enumerate(deltas):
            pieces[row].append(d)
    return generation.completions, ["".join(p) for p in pieces]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_stream_deltas_concatenate_to_the_decoded_tokens(model, tokenizer, seed):
    sampling = SamplingParams(temperature=1.0, seed=seed)  # random tokens: byte pieces, partial UTF-8, spaces
    completions, streamed = run_stream(model, tokenizer, ["the cat", "a café in"], 40, sampling=sampling)
    for c, text in zip(completions, streamed):
        assert text == c.text == tokenizer.decode(c.tokens)


def test_a_stop_string_cuts_the_text_and_ends_the_row(model, tokenizer):
    free, _ = run_stream(model, tokenizer, ["the cat", "once upon"], 30)
    text = free[0].text
    stop = text[len(text) // 2: len(text) // 2 + 3]  # three characters from the middle of row 0's text
    stopped, streamed = run_stream(model, tokenizer, ["the cat", "once upon"], 30, stop=[stop, "never-there"])
    assert stopped[0].text == streamed[0] == text[: text.index(stop)]
    assert stopped[0].finish_reason == "stop" and len(stopped[0].tokens) < len(free[0].tokens)
    other = free[1].text
    expected_other = other[: other.index(stop)] if stop in other else other
    assert stopped[1].text == streamed[1] == expected_other


def test_text_that_may_start_a_stop_string_is_held_back(tokenizer):
    ids = tokenizer.encode("the cat sat on the mat", bos=False)
    stream = TextStream(tokenizer, stop=["on the mat!"])
    deltas = [stream.push(i) for i in ids]
    assert "".join(deltas) == "the cat sat "  # "on the mat" might still become the stop string
    assert stream.close() == "on the mat" and not stream.stopped


def test_text_completion_continues_each_prompt(model, tokenizer):
    prompts = ["the dog", "once upon a time there"]
    completions = text_completion(model, tokenizer, prompts, max_gen_len=12, sampling=GREEDY, logprobs=True)
    for prompt, c in zip(prompts, completions):
        assert c.prompt_tokens == tokenizer.encode(prompt, bos=True)
        assert c.text == tokenizer.decode(c.tokens) and len(c.logprobs) == len(c.tokens)


def test_chat_completion_prompts_in_the_llama2_chat_format(model, tokenizer):
    dialog = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat?"}]
    (c,) = chat_completion(model, tokenizer, [dialog], max_gen_len=8, sampling=GREEDY)
    assert c.prompt_tokens[0] == tokenizer.bos_id
    assert tokenizer.decode(c.prompt_tokens) == "[INST] <<SYS>>\nbe brief\n<</SYS>>\n\nthe cat? [/INST]"
    assert c.text == tokenizer.decode(c.tokens)


def _held_back_reference(text: str, stops: list[str]) -> tuple[str, int]:
    """The quadratic definition: text cut at the earliest stop string; the longest end that begins one."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    if hits:
        return text[: min(hits)], 0
    return text, max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


@settings(max_examples=100, deadline=None)
@given(words=st.lists(st.sampled_from(["the", " cat", " sat", " on", " mat", "a", "t", " "]), max_size=20),
       stops=st.lists(st.text(alphabet="the catsomn", min_size=1, max_size=8), min_size=1, max_size=4))
def test_stop_holdback_matches_the_quadratic_definition(tokenizer, words, stops):
    stream = TextStream(tokenizer, stop=stops)
    released = ""
    for i in tokenizer.encode("".join(words), bos=False):
        released += stream.push(i)
        cut, held = _held_back_reference(stream.text, stops)
        assert stream.text == cut or stream.stopped
        assert released == (cut if stream.stopped else cut[: len(cut) - held])
    released += stream.close()
    expected, _ = _held_back_reference("".join(words), stops)
    assert released == stream.text == expected


def test_a_megabyte_stop_string_costs_no_more_per_token_than_a_short_one(tokenizer):
    """Issue 21: the old check was quadratic in the stop string's length on every token (34 s for 4 tokens)."""
    ids = tokenizer.encode("the cat sat on the mat " * 20, bos=False)
    stream = TextStream(tokenizer, stop=["the cat sat on the mat " * 2 + "x" * 2**20])
    deadline = time.monotonic() + 5.0  # generous: the linear check needs milliseconds
    text = "".join(stream.push(i) for i in ids) + stream.close()
    assert time.monotonic() < deadline
    assert text == "the cat sat on the mat " * 20 and not stream.stopped


def test_fit_dialog_drops_the_oldest_exchanges_after_the_system_prompt(tokenizer):
    system = {"role": "system", "content": "be brief"}
    exchanges = [{"role": r, "content": f"{r} message {i}"} for i in range(3) for r in ("user", "assistant")]
    dialog = [system, *exchanges, {"role": "user", "content": "the last question"}]
    kept = [system, *exchanges[4:], dialog[-1]]  # the newest exchange and the question
    context = len(encode_dialog(tokenizer, kept)) + 1
    assert len(encode_dialog(tokenizer, [system, *exchanges[2:], dialog[-1]])) >= context  # one more would not fit
    ids = fit_dialog(tokenizer, dialog, context)
    assert dialog == kept and ids == encode_dialog(tokenizer, kept)


def test_ids_of_an_embedding_padded_past_the_tokenizer_are_never_sampled(tokenizer, tmp_path):
    """A model whose vocabulary is padded past its tokenizer's (the CLI fuzz suite found an IndexError traceback)."""
    import shutil

    from llamalab.checkpoint import save
    from llamalab.cli.main import main

    padded = peaked_model(vocab_size=tokenizer.vocab_size + 20, max_seq_len=128)
    with torch.no_grad():
        padded.output.weight[tokenizer.vocab_size:] *= 100  # the padding ids would win every greedy step
    [completion] = text_completion(padded, tokenizer, ["the cat"], max_gen_len=8, sampling=GREEDY)
    assert all(t < tokenizer.vocab_size for t in completion.tokens) and len(completion.tokens) > 0
    save(padded, tmp_path / "model")
    shutil.copy(tokenizer.path, tmp_path / "model" / "tokenizer.model")
    assert main(["generate", str(tmp_path / "model"), "--prompt", "the cat", "--max-new-tokens", "4",
                 "--temperature", "0", "--device", "cpu"]) in (0, None)


def test_chat_generation_fits_the_dialog_and_ends_at_the_tokenizers_stop_id(tokenizer):
    short = peaked_model(vocab_size=tokenizer.vocab_size, max_seq_len=64)
    stop_first = SamplingParams(temperature=0, logit_bias={tokenizer.eos_id: 100})  # the stop id wins every step
    exchanges = [{"role": r, "content": f"{r} says the cat sat on the mat {i}"} for i in range(6)
                 for r in ("user", "assistant")]
    dialog = [*exchanges, {"role": "user", "content": "where did the cat sit"}]
    assert len(encode_dialog(tokenizer, dialog)) >= 64
    generation = chat_generation(short, tokenizer, dialog, 8, stop_first)
    assert len(encode_dialog(tokenizer, dialog)) < 64 and dialog[-1]["content"] == "where did the cat sit"
    assert [d for deltas in stream_text(generation, tokenizer) for d in deltas] in ([], [""])
    [completion] = generation.completions
    assert completion.tokens == [] and completion.finish_reason == "stop"
    assert completion.prompt_tokens == encode_dialog(tokenizer, dialog)
