"""The command line: a thin shell over the Python API (``lrtransfer --help``), one module per
group of commands; each command parses its options and calls the API."""
from .common import app
# importing a command module adds its commands to the app, in this order in --help
from .run import keys, status, sweep, worker
from .analyse import compare, plot, report
from .tune import tune
from .export import export
from .importing import import_
from .coordcheck import coordcheck
from .inspect import inspect
from .reproduce import reproduce

__all__ = ["app", "main", "sweep", "worker", "status", "keys", "plot", "report", "compare", "tune", "export", "import_",
           "coordcheck", "inspect", "reproduce"]


def main():
    app()


if __name__ == "__main__":
    main()
