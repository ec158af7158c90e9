"""`llamalab generate`'s OpenAI sampling flags: --logit-bias, --presence-penalty, --frequency-penalty."""
import json

import pytest

from llamalab.cli.main import main

DEBUG = ["--preset", "debug", "--random-init", "--seed", "0", "--prompt-ids", "1,5,9", "--temperature", "0"]


def generated(capsys, *argv) -> list[int]:
    assert main(["generate", *DEBUG, *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)["tokens"]


def test_logit_bias_of_100_makes_greedy_repeat_the_biased_token(capsys):
    assert generated(capsys, "--max-new-tokens", "6", "--logit-bias", "42=100") == [42] * 6
    plain = generated(capsys, "--max-new-tokens", "6")
    banned = generated(capsys, "--max-new-tokens", "6", "--logit-bias", f"{plain[0]}=-100")
    assert banned[0] != plain[0]


def test_frequency_penalty_stops_a_forced_repeat_once_it_outweighs_the_bias(capsys):
    # a +3 bias against a penalty of 2 per repeat: the token can only win while the count stays low
    assert generated(capsys, "--max-new-tokens", "12", "--logit-bias", "42=3") == [42] * 12
    tokens = generated(capsys, "--max-new-tokens", "12", "--logit-bias", "42=3", "--frequency-penalty", "2")
    assert tokens[0] == 42 and tokens.count(42) < 12


@pytest.mark.parametrize("argv, message", [
    (["--logit-bias", "42"], "ID=BIAS"), (["--logit-bias", "x=1"], "ID=BIAS"),
    (["--logit-bias", "42=101"], "logit_bias"), (["--presence-penalty", "2.5"], "presence_penalty"),
    (["--frequency-penalty", "-3"], "frequency_penalty"),
])
def test_bad_sampling_flags_are_one_error_line(capsys, argv, message):
    assert main(["generate", *DEBUG, *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
