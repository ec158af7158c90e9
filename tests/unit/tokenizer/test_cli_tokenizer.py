import json

import sentencepiece

from llamalab.cli.main import main


def test_train_then_encode(tmp_path, sample_texts, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sample_texts(300)), encoding="utf-8")
    out = tmp_path / "tok" / "tokenizer.model"
    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "300", "--out", str(out)]) == 0
    sp = sentencepiece.SentencePieceProcessor(model_file=str(out))
    assert sp.vocab_size() == 300 and (sp.bos_id(), sp.eos_id()) == (1, 2)
    capsys.readouterr()

    assert main(["tokenizer", "encode", str(out.parent), "the café 😀", "--json"]) == 0
    encoded = json.loads(capsys.readouterr().out)
    assert encoded["ids"] == [1] + sp.encode("the café 😀")
    assert encoded["pieces"] == [sp.id_to_piece(i) for i in encoded["ids"]]


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    for argv in [["train", str(tmp_path / "missing.txt"), "--vocab-size", "300"], ["encode", str(tmp_path), "hello"]]:
        assert main(["tokenizer", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("llamalab tokenizer: error:") and len(err.strip().splitlines()) == 1
