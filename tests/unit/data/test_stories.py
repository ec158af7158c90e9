import json
import re
import subprocess
import sys

from llamalab.data.stories import ANIMALS, BOYS, GIRLS, PLACES, PLOTS, stories, write_stories


def test_the_same_seed_gives_the_same_corpus_in_another_process(tmp_path):
    write_stories(tmp_path / "a.jsonl", 50, seed=7)
    code = f"from llamalab.data.stories import write_stories; write_stories({str(tmp_path / 'b.jsonl')!r}, 50, seed=7)"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert [json.loads(line)["text"] for line in lines] == list(stories(50, 7))


def test_another_seed_gives_other_stories():
    assert not set(stories(200, seed=0)) & set(stories(200, seed=1))


def test_stories_are_varied():
    texts = list(stories(2000))
    assert len(set(texts)) == 2000
    corpus = "\n".join(texts)
    names = {c.name for c in GIRLS + BOYS + ANIMALS if re.search(rf"\b{c.name}\b", corpus)}
    assert len(names) == len(GIRLS + BOYS + ANIMALS)
    assert all(place.name in corpus for place in PLACES)
    assert corpus.count('"') > 2000  # dialogue
    words = set(re.findall(r"[a-z]+", corpus.lower()))
    assert len(words) > 700  # a young child's vocabulary
    openings = {t.split(".")[0] for t in texts}
    assert len(openings) > 100
    assert len(PLOTS) >= 7


def test_stories_are_well_formed():
    for text in stories(1000, seed=3):
        assert "{" not in text and "}" not in text, text  # every slot filled
        assert not re.search(r"\b[Aa] [aeiou]", text), text  # "an elephant", not "a elephant"
        assert text.count('"') % 2 == 0, text  # quotes closed
        starts = [p[:1] for p in text.split("\n")] + re.findall(r"[.!?] +(.)", text)  # after . ! ? and a space
        assert all(c.isupper() or c == '"' for c in starts), text
        assert 40 <= len(text.split()) <= 250
