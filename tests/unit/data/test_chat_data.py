"""Chat / instruction data: SmolLM2's own chat template, labels only on the assistant's tokens, padding, errors."""
import json

import pytest

from llamalab.data.chat import ChatBatches, ChatData, pad_batch, read_dialogs, render_example
from llamalab.errors import DataError
from llamalab.tokenizer import load_tokenizer

TWO_TURNS = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
             {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
IM_START, IM_END, NL = 1, 2, 198  # SmolLM2's <|im_start|>, <|im_end|> and "\n"


@pytest.fixture(scope="module")
def tokenizer(smollm2_hf_dir):
    return load_tokenizer(smollm2_hf_dir)


def test_two_turn_labels_by_hand(tokenizer, hf_smollm2):
    example = render_example(tokenizer, TWO_TURNS)
    hf_tokenizer, _ = hf_smollm2
    assert example.ids == hf_tokenizer.apply_chat_template(TWO_TURNS, tokenize=True, return_dict=False)
    system = [IM_START, 9690, NL, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712,
              8182, IM_END, NL]  # the template's default: "You are a helpful AI assistant named SmolLM, ..."
    assistant_header = [IM_START, 520, 9531, NL]  # "<|im_start|>assistant\n"
    user1 = [IM_START, 4093, NL, 26843, 665, IM_END, NL]  # "<|im_start|>user\nHi there<|im_end|>\n"
    answer1 = [19556, 17, IM_END, NL]  # "Hello!<|im_end|>\n"
    user2 = [IM_START, 4093, NL, 34, 27, 34, 47, IM_END, NL]  # "2+2?"
    answer2 = [36, IM_END, NL]  # "4<|im_end|>\n"
    assert example.ids == system + user1 + assistant_header + answer1 + user2 + assistant_header + answer2
    masked = [-100]
    assert example.labels == (masked * len(system + user1 + assistant_header) + answer1
                              + masked * len(user2 + assistant_header) + answer2)
    inputs, targets = pad_batch([example], pad_id=0)
    assert inputs[0].tolist() == example.ids[:-1] and targets[0].tolist() == example.labels[1:]  # next-token targets


def test_alpaca_records_become_a_user_turn_and_an_answer(tmp_path, tokenizer):
    path = tmp_path / "alpaca.jsonl"
    path.write_text(json.dumps({"instruction": "Add the numbers.", "input": "2 and 2", "output": "4"}) + "\n\n"
                    + json.dumps({"instruction": "Say hi.", "output": "Hi"}) + "\n")
    dialogs = read_dialogs(path)
    assert dialogs == [
        [{"role": "user", "content": "Add the numbers.\n\n2 and 2"}, {"role": "assistant", "content": "4"}],
        [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi"}],
    ]
    example = render_example(tokenizer, dialogs[0])
    assert [t for t in example.labels if t != -100] == [36, IM_END, NL]


@pytest.mark.parametrize("line, message", [
    ("{not json", r"bad.jsonl:2: not valid JSON"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', r"bad.jsonl:2: no assistant message"),
    ('{"messages": [{"role": "bot", "content": "hi"}]}', r"bad.jsonl:2: message 0 must be an object with a role"),
    ('{"instruction": "x", "output": 3}', r"bad.jsonl:2: an Alpaca record needs"),
    ('{"text": "plain"}', r"bad.jsonl:2: expected a `messages` list"),
])
def test_a_malformed_line_is_named(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"instruction": "ok", "output": "ok"}) + "\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        read_dialogs(path)


def test_batches_pad_to_the_longest_and_mask_the_padding(tmp_path, smollm2_hf_dir):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"instruction": "Say " + "very " * i + "little.", "output": "ok " * (i + 1)})
                            + "\n" for i in range(6)))
    data = ChatData(path, smollm2_hf_dir / "tokenizer.json", seq_len=128, val_path=path)
    lengths = [len(e.ids) - 1 for e in data.splits["train"]]
    batches = ChatBatches(data, global_batch=4, seed=0, rank=1, world=2)
    inputs, targets = batches.next()
    rows = batches._order[2:4]  # rank 1's half of the first global batch
    assert inputs.shape == (2, max(lengths[i] for i in batches._order[:4]))
    for row, i in enumerate(rows):
        n = lengths[i]
        assert inputs[row, :n].tolist() == data.splits["train"][i].ids[:-1]
        assert (targets[row, n:] == -100).all() and (inputs[row, n:] == data.pad_id).all()
    assert batches.state_dict() == {"epoch": 0, "index": 4}


def test_examples_whose_answer_lies_beyond_seq_len_are_refused(tmp_path, smollm2_hf_dir):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"instruction": "Say ok.", "output": "ok"}) + "\n")
    with pytest.raises(DataError, match="no example of .* has an answer within the first 32 tokens"):
        ChatData(path, smollm2_hf_dir / "tokenizer.json", seq_len=32)  # the answer is tokens 33-35 of 36
    [kept] = ChatData(path, smollm2_hf_dir / "tokenizer.json", seq_len=33).splits["train"]
    assert len(kept.ids) == 34 and kept.labels[-2:] == [-100, 2231]  # cut to seq_len + 1: the answer's first token
