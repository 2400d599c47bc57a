"""Every command's --help reads well at 80 and 120 columns: it exits 0, fits the width, cuts no
word across two lines, shows every bracket of its help text, and names arguments plainly in
its usage line."""
import re

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from lrtransfer.cli import app

BOX = str.maketrans("", "", "│╭╮╰╯─")
COMMANDS = [None, *sorted(get_command(app).commands)]


def render(command, columns: int) -> str:
    r = CliRunner().invoke(app, [*([command] if command else []), "--help"], env={"COLUMNS": str(columns)},
                           terminal_width=columns, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.stdout


def flat(text: str) -> str:
    """``text`` without the panels' frames, every run of whitespace one space: a word cut
    across two lines reads as two words here."""
    return " ".join(text.translate(BOX).split())


def shown(source: str) -> str:
    """Help source text as the terminal shows it (rich markup escapes removed)."""
    return flat(source.replace("\\[", "["))


def sources(command) -> list[str]:
    """The texts --help of ``command`` shows: its help, epilog, and each parameter's help and metavar."""
    cmd = get_command(app) if command is None else get_command(app).commands[command]
    texts = [cmd.help or "", cmd.epilog or ""]
    for param in cmd.params:
        if not getattr(param, "hidden", False):
            texts += [getattr(param, "help", None) or "", param.metavar or ""]
    return [t for t in texts if t]


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.parametrize("command", COMMANDS)
def test_help_keeps_every_word_and_bracket(command, columns):
    text = render(command, columns)
    assert max(len(line) for line in text.splitlines()) <= columns
    page = flat(text)
    for source in sources(command):
        assert shown(source) in page, (command, columns, source)
        for bracket in re.findall(r"\[[^\]]*\]", source.replace("\\[", "[")):
            assert bracket in page, (command, bracket)


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.parametrize("command", COMMANDS)
def test_usage_names_arguments_plainly(command, columns):
    usage = [line for line in render(command, columns).splitlines() if "Usage:" in line]
    assert usage and not any("{" in line or "}" in line for line in usage)


def test_the_checks_catch_a_cut_word_and_a_lost_bracket():
    assert shown("allowed: test_acc") not in flat("allowed: tes\n│ t_acc")
    assert shown("extras: lrtransfer\\[mlflow]") not in flat("extras: lrtransfer")


def test_root_help_lists_each_command_by_its_first_paragraph():
    page = flat(render(None, 80))
    for name, cmd in get_command(app).commands.items():
        assert shown(cmd.help.split("\n\n")[0]) in page, name
