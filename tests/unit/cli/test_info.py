import json
import subprocess
import sys


def run_cli(*argv):
    return subprocess.run([sys.executable, "-m", "llamalab", *argv], capture_output=True, text=True)


def test_info_json_reports_the_published_parameter_count():
    result = run_cli("info", "--preset", "llama2-7b", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["parameters"] == 6_738_415_616
    assert info["ffn_hidden_dim"] == 11008


def test_info_table_is_readable():
    result = run_cli("info", "--preset", "stories15M")
    assert result.returncode == 0
    assert "15,191,712" in result.stdout


def test_unknown_preset_exits_nonzero_with_one_line():
    result = run_cli("info", "--preset", "nope")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr


def test_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0 and "info" in result.stdout



def test_help_and_info_never_import_torch():
    """They answer in a tenth of a second; importing torch takes a second or more (and a model built on the meta
    device several more, through dynamo)."""
    code = ("import sys; from llamalab.cli.main import build_parser, main; build_parser().format_help(); "
            "main(['info', '--preset', 'llama3-8b']); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "False"
