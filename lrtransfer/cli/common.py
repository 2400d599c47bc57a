"""What every command shares: the Typer app and its readable --help, the consoles, the error
handling (a UserError is one message and exit code 2), and the options several commands take."""
from __future__ import annotations

import functools
import inspect
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, List, Optional, Union, get_args, get_origin, get_type_hints

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup
from typer.models import ArgumentInfo, ParameterInfo

from ..analysis.transfer import METRIC_SPECS
from ..errors import UserError
from ..report.render import FORMATS
from ..run.provenance import SCALE_AXES

err = Console(stderr=True)
out = Console()

# what a repeatable option's value looks like, by option name (--help shows it instead of a type)
LIST_METAVARS = {"--set": "KEY=VALUE", "--series": "NAME", "--param": "NAME=LOW:HIGH[:log]",
                 "--scales": "SCALE", "--label": "SERIES=NAME"}
TYPE_METAVARS = {int: "INT", float: "NUMBER", Path: "PATH"}
# what --device takes (train.resolve_device): auto picks cuda when it is available
DEVICES = ("auto", "cpu", "cuda", "cuda:N")


def one_of(values) -> str:
    """``a | b | c``: how --help lists an option's allowed values (spaced, so lines break between them)."""
    return " | ".join(str(v) for v in values)


def choice_help(values, text: str) -> str:
    """An option's help that starts with the values it allows."""
    return f"{one_of(values)}; {text}"


def reflow(text: str | None) -> str:
    """Help text whose paragraphs (blank-line separated) are each one line, for the terminal to
    wrap at its own width; rich markup escaped, so brackets are shown as written."""
    paragraphs = inspect.cleandoc(text or "").split("\n\n")
    return escape("\n\n".join(" ".join(p.split()) for p in paragraphs))


def _declared(fn):
    """(name, type, ParameterInfo) of each parameter of command ``fn`` declared with
    ``typer.Option`` / ``typer.Argument`` (as its default, or in ``Annotated``)."""
    hints = get_type_hints(inspect.unwrap(fn), include_extras=True)
    for name, p in inspect.signature(fn).parameters.items():
        hint, info = hints.get(name, p.annotation), p.default
        if get_origin(hint) is Annotated:
            hint, *extras = get_args(hint)
            info = next((e for e in extras if isinstance(e, ParameterInfo)), info)
        if get_origin(hint) is Union:   # Optional[int] -> int
            hint = next(a for a in get_args(hint) if a is not type(None))
        if isinstance(info, ParameterInfo):
            yield name, hint, info


def _metavar(name: str, hint, info: ParameterInfo) -> str:
    """A readable metavar: nothing for a flag, the argument's name, the value's shape for a
    repeatable option, the option's name for a choice, else INT / NUMBER / PATH / TEXT."""
    if isinstance(info, ArgumentInfo):
        return name.upper()
    if hint is bool:
        return ""
    if get_origin(hint) in (list, List):
        return next((LIST_METAVARS[d] for d in info.param_decls or () if d in LIST_METAVARS), "VALUE")
    if isinstance(hint, type) and issubclass(hint, Enum):
        return name.upper()
    return TYPE_METAVARS.get(hint, "TEXT")


_READABLE: set[int] = set()   # the declarations made readable (options shared by commands are once)


def readable(fn) -> None:
    """Every parameter of ``fn`` gets a readable metavar (typer's default reads <bool>, <int>),
    a choice lists its values in its help, and help text reflows and keeps its brackets."""
    for name, hint, info in _declared(fn):
        if id(info) in _READABLE:
            continue
        _READABLE.add(id(info))
        info.help = reflow(info.help)
        if isinstance(hint, type) and issubclass(hint, Enum) and info.metavar is None:
            info.help = choice_help([e.value for e in hint], info.help)
        if info.metavar is None:
            info.metavar = _metavar(name, hint, info)


class _Readable:
    """--help's own option shows no metavar; the usage line names arguments plainly."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    def collect_usage_pieces(self, ctx) -> list[str]:
        """``[OPTIONS] RESULTS_DIR``: arguments by name, [in brackets] when optional."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces


class ReadableCommand(_Readable, TyperCommand):
    pass


class ReadableGroup(_Readable, TyperGroup):
    pass


def _epilog(title: str, examples: tuple[str, ...]) -> str:
    """``title`` then each example as ``$ command``, its ``  # comment`` on the line above it
    (a command too long for the terminal continues on a line without the ``$``)."""
    lines = [title]
    for example in examples:
        command, _, comment = example.partition("  # ")
        lines += ([f"# {comment.strip()}"] if comment else []) + [f"$ {command.strip()}"]
    return escape("\n".join(lines))


class App(typer.Typer):
    """typer.Typer whose commands take ``examples`` (shown under "Examples" at the end of --help)
    and whose help text reflows to the terminal's width."""

    def command(self, *args, examples: tuple[str, ...] = (), **kwargs):
        kwargs.setdefault("cls", ReadableCommand)
        if examples:
            kwargs["epilog"] = _epilog("Examples:", examples)
        register = super().command(*args, **kwargs)

        def decorator(fn):
            readable(fn)
            if "help" not in kwargs:
                fn.__doc__ = reflow(fn.__doc__)
            return register(fn)
        return decorator


app = App(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=ReadableGroup,
          context_settings={"help_option_names": ["-h", "--help"]},
          epilog=_epilog("A new user's first commands:", (
              "lrtransfer keys  # what an experiment file takes",
              "lrtransfer sweep experiments/quickstart.toml --dry-run  # grid size and a time estimate",
              "lrtransfer sweep experiments/quickstart.toml  # run it (resumes)",
              "lrtransfer report results/quickstart  # verdicts",
              "lrtransfer plot results/quickstart  # figures",
              "lrtransfer COMMAND -h  # every command has examples")))


def _version(value: bool):
    if value:
        from .. import __version__
        out.print(f"lrtransfer {__version__}", markup=False, highlight=False)
        raise typer.Exit()


def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")):
    """Does a learning rate tuned on a small network stay optimal on a wider or deeper one?"""


readable(_root)
app.callback()(_root)


def user_errors(fn):
    """Bad input: one message naming the key/path/value, exit code 2, nothing written.
    Ctrl-C: one line saying where things stand, exit code 130."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..sweep.sweep import SweepInterrupted
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            # user text (keys, values, paths) is printed literally: no rich markup in it
            err.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        except SweepInterrupted as e:
            err.print(escape(e.summary), highlight=False, soft_wrap=True)
            raise typer.Exit(130)
        except KeyboardInterrupt:
            err.print("interrupted", highlight=False)
            raise typer.Exit(130)
    return wrapper


def say(text: str, console: Console = out) -> None:
    """Print ``text`` as it is: no markup, no highlighting, no wrapping."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def storage_url(url: Optional[str]) -> Optional[str]:
    """The optuna storage: ``--storage``, else the environment's, else None (the results' journal)."""
    from ..sweep.queue import STORAGE_ENV
    return url or os.environ.get(STORAGE_ENV) or None


def axis_name(axis) -> Optional[str]:
    return getattr(axis, "value", axis) or None


# the options several commands take, declared once
Format = Enum("Format", {f: f for f in FORMATS}, type=str)          # the report's, tune's and compare's
# --axis: a runs-table key, checked against the runs it is read with (analysis.transfer.resolve_axes
# lists the allowed ones), so any numeric config key can be a scale, not only SCALE_AXES
Axis = str
AXIS_HELP = (f"a scale-like key ({', '.join(SCALE_AXES)}) or any numeric config key with values > 0 that varies, "
             f"e.g. weight_decay")
METRIC_HELP = ("what to rank LRs by: " + ", ".join(f"{m.name} ({'maximized' if m.maximize else 'minimized'})"
                                                  for m in METRIC_SPECS.values()))
Metric = Annotated[str, typer.Option("--metric", metavar="METRIC", help=METRIC_HELP)]
Device = Annotated[str, typer.Option("--device", metavar="DEVICE",
                                     help=f"{one_of(DEVICES)} (auto: cuda when available)")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress lines on stderr (the summary and errors "
                                                             "are still printed)")]
Overrides = Annotated[List[str], typer.Option("--set", metavar="KEY=VALUE", help="override a key, as in sweep")]
Grace = Annotated[float, typer.Option("--grace", help="seconds without a heartbeat before a running cell counts "
                                                      "as lost")]
ResultsDir = Annotated[Path, typer.Argument(help="results directory of a sweep")]


def _regime_option(flag: str, meaning: str):
    return Annotated[float, typer.Option(flag, help=f"regimes: {meaning}")]


RegimeWindow = _regime_option("--regime-window", "fraction of each run's logged points, at the end, that make up "
                                                 "its 'late' window")
RegimeAlpha = _regime_option("--regime-alpha", "significance level of the trend tests (loss falling, loss below "
                                               "chance, motion drifting or at rest)")
RegimeBlocks = Annotated[int, typer.Option("--regime-blocks", help="regimes: the late window is cut into this many "
                                           "blocks of consecutive points whose means the tests use (>= 4)")]
