"""``lrtransfer import``: runs trained elsewhere (a CSV or parquet table, a W&B runs-table export,
an MLflow experiment) as a results directory the analysis reads like a sweep's (docs/results.md,
"Importing runs")."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import UserError, nearest
from ..run.provenance import SCALE_AXES, is_metadata, run_id
from .store import atomic_directory, write_json, write_table

SOURCES = ("auto", "csv", "parquet", "wandb", "mlflow")
# the metrics a column can be mapped to, and the runs-table column each fills; `loss` is the loss
# the analysis ranks by default (train_loss), whatever the file calls it (val_loss, say)
METRICS = {"loss": "final_train_loss", "train_loss": "final_train_loss", "test_loss": "final_test_loss",
           "test_acc": "final_test_acc"}
LOSSES = ("loss", "train_loss", "test_loss")   # a NaN or inf in one of these: the run diverged
CURVE_COLUMNS = {"loss": "train_loss", "train_loss": "train_loss", "test_loss": "test_loss"}
RUN_KEYS = ("lr", "series", "seed", "status")
# what other tools' run states mean here; a state not listed (running, pending) is no result: skipped
STATES = {"done": "done", "finished": "done", "success": "done", "succeeded": "done", "completed": "done",
          "ok": "done", "diverged": "diverged", "failed": "failed", "crashed": "failed", "killed": "failed",
          "error": "failed"}
STEP_NAMES = ("step", "global_step", "iteration")   # a column so named makes the table a long one
SKIPPED_FILE = "import_skipped.csv"
# a W&B runs-table export (the web UI's "Export as CSV") starts with these columns
WANDB_COLUMNS = ("Name", "State")
DEFAULT_SERIES = "imported"


@dataclass
class Table:
    """A source's rows as read, before mapping: ``rows`` are {column: raw value} (a string, a
    number or None for an empty cell); ``curves[i]`` is row i's per-metric history, where the
    source keeps it apart (MLflow)."""
    label: str
    kind: str
    columns: list[str]
    rows: list[dict]
    curves: list[dict] | None = None


@dataclass
class Imported:
    """What an import wrote: the results directory, its runs, and the rows it skipped and why."""
    root: Path
    runs: pd.DataFrame
    curves: pd.DataFrame
    skipped: pd.DataFrame
    kind: str
    long: bool = False


# ----------------------------------------------------------------------------- options

def parse_mapping(pairs: list[str], series: str | None = None, seed: str | None = None) -> dict[str, str]:
    """``--map KEY=COLUMN`` options (and ``--series COLUMN``, ``--seed COLUMN``, shorthands for
    ``--map series=COLUMN``, ``--map seed=COLUMN``) as {key: column}, checked."""
    mapping: dict[str, str] = {}
    given = [(p, "--map") for p in pairs]
    given += [(f"series={series}", "--series")] if series is not None else []
    given += [(f"seed={seed}", "--seed")] if seed is not None else []
    for text, option in given:
        key, sep, column = text.partition("=")
        key, column = key.strip(), column.strip()
        if not sep or not key or not column:
            raise UserError(f"{option} {text!r}: expected KEY=COLUMN, a lrtransfer key and the file's column "
                            f"holding it, e.g. --map lr=learning_rate")
        if key in mapping:
            raise UserError(f"--map {key}: mapped twice (to {mapping[key]!r} and {column!r}); map each key once")
        if key not in RUN_KEYS and key not in METRICS and is_metadata(key):
            raise UserError(f"--map {text}: {key!r} is not a key a column can be mapped to (it is a metric, timing "
                            f"or provenance column lrtransfer writes); allowed: lr, series, seed, status, "
                            f"{', '.join(METRICS)}, or any numeric config key such as {', '.join(SCALE_AXES)}")
        mapping[key] = column
    if "lr" not in mapping:
        raise UserError("--map lr=COLUMN is required: name the column holding each run's learning rate"
                        + _guess(pairs, "lr"))
    if "loss" in mapping and "train_loss" in mapping:
        raise UserError(f"--map loss={mapping['loss']} and --map train_loss={mapping['train_loss']}: loss means "
                        f"train_loss (the metric the report ranks by default); map one of them")
    if not any(k in METRICS for k in mapping):
        raise UserError(f"no metric mapped: add --map loss=COLUMN (or {', '.join(k for k in METRICS if k != 'loss')}"
                        f"=COLUMN): the final value the LRs are ranked by")
    if not config_keys(mapping):
        raise UserError(f"no scale key mapped: add --map KEY=COLUMN for the scale the runs vary along, one of "
                        f"{', '.join(SCALE_AXES)} or any other numeric key (e.g. --map width=n_embd)")
    return mapping


def _guess(pairs: list[str], key: str) -> str:
    for text in pairs:
        other = text.partition("=")[0].strip()
        if other and nearest(other, [key]):
            return f" ({other!r} given{nearest(other, [key])})"
    return ""


def config_keys(mapping: dict[str, str]) -> list[str]:
    """The mapped keys that are config (the scale keys): every key but lr, series, seed, status and metrics."""
    return [k for k in mapping if k not in RUN_KEYS and k not in METRICS]


# ----------------------------------------------------------------------------- reading

def read_source(path: Path | None, kind: str, uri: str | None = None, experiment: str | None = None) -> Table:
    """The rows of ``path`` (csv, parquet, wandb: a W&B runs-table CSV) or of MLflow experiment
    ``experiment`` at ``uri``; ``kind`` auto: by the file's suffix, a CSV whose first columns are
    W&B's Name and State being a W&B export."""
    if kind not in SOURCES:
        raise UserError(f"--from {kind!r}: allowed: {', '.join(SOURCES)}{nearest(kind, SOURCES)}")
    if kind == "mlflow":
        if path is not None:
            raise UserError(f"FILE {path}: --from mlflow reads the tracking store --uri, not a file; drop FILE")
        if not uri or not experiment:
            raise UserError("--from mlflow needs --uri URI (e.g. sqlite:///mlflow.db or http://host:5000) and "
                            "--experiment NAME")
        return _read_mlflow(uri, experiment)
    for option, value in (("--uri", uri), ("--experiment", experiment)):
        if value is not None:
            raise UserError(f"{option}: only for --from mlflow (this import reads the file {path})")
    if path is None:
        raise UserError("FILE is required (a CSV or parquet table, or a W&B runs-table CSV), or --from mlflow")
    if not path.is_file():
        raise UserError(f"FILE {path}: no such file")
    if kind == "auto":
        kind = "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"
    table = _read_parquet(path) if kind == "parquet" else _read_csv(path)
    if kind == "wandb" or (kind == "csv" and all(c in table.columns for c in WANDB_COLUMNS)):
        missing = [c for c in WANDB_COLUMNS if c not in table.columns]
        if missing:
            raise UserError(f"FILE {path}: --from wandb expects the W&B runs-table export's columns "
                            f"{', '.join(WANDB_COLUMNS)}; it lacks {', '.join(missing)}")
        table.kind = "wandb"
    else:
        table.kind = kind
    return table


def _read_csv(path: Path) -> Table:
    try:
        # every cell as its text: an empty cell (missing) stays apart from "NaN" (a diverged loss)
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise UserError(f"FILE {path}: not a readable CSV table ({str(e).splitlines()[0] if str(e) else e})") from None
    rows = [{c: (None if v == "" else v) for c, v in row.items()} for row in df.to_dict("records")]
    return Table(f"imported from {path.name}", "csv", [str(c) for c in df.columns], rows)


def _read_parquet(path: Path) -> Table:
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for files that are not parquet
        raise UserError(f"FILE {path}: not a readable parquet table ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None
    # to_pylist keeps a null (missing) apart from a NaN (a diverged loss)
    return Table(f"imported from {path.name}", "parquet", list(table.column_names), table.to_pylist())


MLFLOW_STATES = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "killed"}


def _read_mlflow(uri: str, experiment: str) -> Table:
    """One row per run: its params and its latest metrics as columns (``params.X`` and
    ``metrics.X`` always, bare ``X`` where only one of them has that name), ``Name``, ``State`` and
    ``mlflow_run_id``; each row's metric histories beside it."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UserError("--from mlflow: the mlflow package is not installed; install the extra: "
                        "pip install 'lrtransfer[mlflow]'") from None
    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
    except Exception as e:  # an unreachable server, a bad URI: the user's input, said once
        raise UserError(f"--uri {uri}: MLflow could not open it: {str(e).splitlines()[0]}") from None
    if found is None:
        names = [e.name for e in client.search_experiments()]
        raise UserError(f"--experiment {experiment!r}: no such experiment at {uri}{nearest(experiment, names)}; "
                        f"experiments there: {', '.join(names) or 'none'}")
    runs = client.search_runs([found.experiment_id], max_results=50000, order_by=["attributes.start_time ASC"])
    rows, curves, columns = [], [], {}
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        row = {f"params.{k}": v for k, v in params.items()} | {f"metrics.{k}": v for k, v in metrics.items()}
        row |= {k: v for k, v in params.items() if k not in metrics}
        row |= {k: v for k, v in metrics.items() if k not in params}
        row |= {"Name": run.info.run_name, "State": MLFLOW_STATES.get(run.info.status, run.info.status.lower()),
                "mlflow_run_id": run.info.run_id}
        rows.append(row)
        columns |= dict.fromkeys(row)
        curves.append({k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)]
                       for k in metrics})
    return Table(f"imported from MLflow {uri} experiment {experiment!r}", "mlflow", list(columns), rows, curves)


# ----------------------------------------------------------------------------- mapping

def _number(value):
    """A cell as a float (NaN and inf included), None when empty, or the text when it is not a number."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value   # True is no learning rate
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return value


def _is_number(v) -> bool:
    return isinstance(v, float)


class _Skip(Exception):
    """A row that cannot be mapped: the reason, said once."""


def _value(row: dict, key: str, column: str, positive: bool) -> float:
    v = _number(row.get(column))
    if v is None:
        raise _Skip(f"{key} missing (column {column} empty)")
    if not _is_number(v):
        raise _Skip(f"{key} {row.get(column)!r} (column {column}) is not a number")
    if not math.isfinite(v) or (positive and v <= 0):
        raise _Skip(f"{key} {v:g} (column {column}) is not {'a finite number > 0' if positive else 'finite'}")
    return v


def _status(row: dict, column: str | None) -> str:
    if column is None:
        return "done"
    raw = row.get(column)
    state = STATES.get(str(raw).strip().lower()) if raw is not None else None
    if state is None:
        raise _Skip(f"status {raw!r} (column {column}) is not a finished run; statuses read: "
                    f"{', '.join(STATES)}")
    return state


def _metrics(row: dict, mapping: dict[str, str], status: str) -> tuple[dict, str]:
    """({final column: value}, status): a NaN or inf loss makes a done run diverged; a done run
    needs a value in some metric."""
    values, text = {}, {}
    for key in (k for k in METRICS if k in mapping):
        v = _number(row.get(mapping[key]))
        if v is not None and not _is_number(v):
            raise _Skip(f"{key} {row.get(mapping[key])!r} (column {mapping[key]}) is not a number")
        if v is not None:
            values[key], text[key] = v, row.get(mapping[key])
    if status == "done":
        if not values:
            raise _Skip(f"no metric value ({', '.join(f'column {mapping[k]}' for k in METRICS if k in mapping)} "
                        f"empty); map a status column to import unfinished runs as failed")
        if any(k in LOSSES and not math.isfinite(v) for k, v in values.items()):
            status = "diverged"
    finals = {METRICS[k]: (v if math.isfinite(v) and status == "done" else math.nan) for k, v in values.items()}
    return finals, status


def _run_rows(table: Table, mapping: dict[str, str], step: str | None) -> tuple[list[tuple[list[int], dict]], list]:
    """The source rows grouped into runs: [(row indexes, the run's mapped keys)], and [(row, reason)]
    for every row that cannot be mapped. A long table's run is the consecutive rows of one
    series, config and seed whose step keeps rising."""
    runs, skipped, open_runs = [], [], {}
    scale_keys = config_keys(mapping)
    for i, row in enumerate(table.rows):
        try:
            keys = {"lr": _value(row, "lr", mapping["lr"], positive=True)}
            for k in scale_keys:
                keys[k] = _value(row, k, mapping[k], positive=k in SCALE_AXES)
            if "series" in mapping:
                name = row.get(mapping["series"])
                if name is None or not str(name).strip():
                    raise _Skip(f"series missing (column {mapping['series']} empty)")
                keys["series"] = str(name).strip()
            if "seed" in mapping:
                s = _value(row, "seed", mapping["seed"], positive=False)
                if s < 0 or s != int(s):
                    raise _Skip(f"seed {row.get(mapping['seed'])!r} (column {mapping['seed']}) is not an integer >= 0")
                keys["seed"] = int(s)
            at = _value(row, "step", step, positive=False) if step else None
        except _Skip as why:
            skipped.append((i, str(why)))
            continue
        ident = tuple(sorted(keys.items()))
        current = open_runs.get(ident)
        if step and current is not None and at > current[1]:
            current[0].append(i)
            open_runs[ident] = (current[0], at)
            continue
        indexes = [i]
        runs.append((indexes, keys))
        open_runs[ident] = (indexes, at)
    return runs, skipped


def map_runs(table: Table, mapping: dict[str, str], step: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                                      pd.DataFrame]:
    """(runs, curves, skipped) of ``table`` under ``mapping`` ({lrtransfer key: column}); ``step``:
    the column of a long table (one row per logged step). Rows are numbered from 1 in ``skipped``
    (the header not counted)."""
    for option, column in [*((f"--map {k}={c}", c) for k, c in mapping.items()),
                           *([(f"--step {step}", step)] if step else [])]:
        if column not in table.columns:
            shown = ", ".join(table.columns[:60]) + (f", … ({len(table.columns)} in all)"
                                                      if len(table.columns) > 60 else "")
            raise UserError(f"{option}: {table.label.removeprefix('imported from ')} has no column {column!r}"
                            f"{nearest(column, table.columns)}; its columns: {shown}")
    if "status" not in mapping and table.kind in ("wandb", "mlflow"):
        mapping = {**mapping, "status": "State"}
    grouped, skipped = _run_rows(table, mapping, step)
    rows, curve_frames, seen, counts = [], [], {}, {}
    for indexes, keys in grouped:
        first = indexes[0]
        try:
            status = _status(table.rows[indexes[-1]], mapping.get("status"))
            if step:
                finals, status, curve, diverged_at = _long_run(table, indexes, mapping, step, status)
            else:
                finals, status = _metrics(table.rows[first], mapping, status)
                curve, diverged_at = _source_curve(table, first, mapping)
        except _Skip as why:
            skipped.append((first, str(why)))
            continue
        series = keys.get("series", DEFAULT_SERIES)
        config = {k: keys[k] for k in config_keys(mapping)}
        cell = (series, tuple(config.items()), keys["lr"])
        if "seed" in keys:
            seed = keys["seed"]
            if (cell, seed) in seen:
                skipped.append((first, f"same series, {', '.join(config)}, lr and seed as row {seen[cell, seed] + 1}"))
                continue
        else:   # the runs of a cell are numbered in the file's order
            seed = counts[cell] = counts.get(cell, -1) + 1
        seen[cell, seed] = first
        rid = run_id({"imported": table.label, "series": series, **config, "lr": keys["lr"], "seed": seed})
        row = {"run_id": rid, "series": series, **config, "lr": keys["lr"], "seed": seed, "status": status, **finals,
               "source": table.label}
        if diverged_at is not None:
            row["diverged_at_step"] = diverged_at
        rows.append(row)
        if curve is not None and len(curve):
            curve_frames.append(curve.assign(run_id=rid, lr=keys["lr"]))
    runs = pd.DataFrame(rows)
    for k in config_keys(mapping):   # integer scales (widths) stay integers
        if k in runs and (runs[k] == runs[k].round()).all():
            runs[k] = runs[k].astype("int64")
    curves = pd.concat(curve_frames, ignore_index=True) if curve_frames else pd.DataFrame()
    if len(curves):
        curves = curves[["run_id", "step", *[c for c in ("train_loss", "test_loss") if c in curves], "lr"]]
    skipped_table = pd.DataFrame(sorted(skipped), columns=["row", "reason"])
    skipped_table["row"] += 1
    return runs, curves, skipped_table


def _long_run(table: Table, indexes: list[int], mapping: dict[str, str], step: str, status: str):
    """A long table's run: its final metrics (each the value at its last logged step), status
    (diverged at the first NaN or inf loss) and curve."""
    points = []
    for i in indexes:
        row = table.rows[i]
        point = {"step": int(_number(row[step]))}
        for key in (k for k in METRICS if k in mapping):
            v = _number(row.get(mapping[key]))
            if v is not None and not _is_number(v):
                raise _Skip(f"{key} {row.get(mapping[key])!r} (column {mapping[key]}, row {i + 1}) is not a number")
            if v is not None:
                point[key] = v
        points.append(point)
    last = {k: p[k] for p in points for k in p}   # each metric's value at its last logged step
    finals, status = _metrics({mapping[k]: v for k, v in last.items() if k in mapping}, mapping, status)
    diverged_at = next((p["step"] for p in points if any(k in LOSSES and not math.isfinite(v)
                                                         for k, v in p.items() if k != "step")), None)
    if diverged_at is not None and status == "done":
        status = "diverged"
        finals = {c: math.nan for c in finals}
    return finals, status, _curve(points), diverged_at


def _curve(points: list[dict]) -> pd.DataFrame:
    """Logged points as a curves table (train_loss, test_loss), finite values only."""
    frame = pd.DataFrame([{"step": p["step"], **{CURVE_COLUMNS[k]: v for k, v in p.items() if k in CURVE_COLUMNS}}
                          for p in points])
    value_columns = [c for c in frame.columns if c != "step"]
    if not value_columns:
        return pd.DataFrame()
    frame[value_columns] = frame[value_columns].where(frame[value_columns].apply(lambda c: c.map(math.isfinite)))
    return frame.dropna(subset=value_columns, how="all")


def _source_curve(table: Table, i: int, mapping: dict[str, str]):
    """The metric histories a source keeps beside its rows (MLflow) as a curve, and the step of the
    first NaN or inf loss (None when none)."""
    if table.curves is None:
        return None, None
    history = table.curves[i]
    by_step: dict[int, dict] = {}
    for key in (k for k in CURVE_COLUMNS if k in mapping):
        name = mapping[key].removeprefix("metrics.")
        for at, value in history.get(name, []):
            by_step.setdefault(int(at), {"step": int(at)})[key] = float(value)
    points = [by_step[s] for s in sorted(by_step)]
    diverged_at = next((p["step"] for p in points if any(k != "step" and not math.isfinite(v) for k, v in p.items())),
                       None)
    return _curve(points) if points else None, diverged_at


# ----------------------------------------------------------------------------- writing

def detect_step(table: Table, mapping: dict[str, str], step: str | None) -> str | None:
    """The long table's step column: ``--step``, else a column named step, global_step or
    iteration that no ``--map`` takes (a W&B or MLflow runs table is never long)."""
    if step is not None or table.kind in ("wandb", "mlflow"):
        return step
    taken = set(mapping.values())
    return next((c for c in table.columns if c.lower() in STEP_NAMES and c not in taken), None)


def looks_like_results(root: Path) -> bool:
    return any((root / name).exists() for name in ("runs.parquet", "runs", "experiment.json"))


def import_runs(results_dir, mapping: dict[str, str], path=None, kind: str = "auto", step: str | None = None,
                uri: str | None = None, experiment: str | None = None, replace: bool = False) -> Imported:
    """Read a table (``read_source``), map its columns (``map_runs``) and write the runs as the
    results directory ``results_dir``: built beside it and moved into place whole. An existing
    directory is refused unless ``replace`` (and then only one that holds results)."""
    root = Path(results_dir)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        if not replace:
            raise UserError(f"--results {root}: exists; importing never merges into a results directory — add "
                            f"--replace to replace it whole, or choose another --results")
        if not root.is_dir() or not looks_like_results(root):
            raise UserError(f"--results {root}: exists and is not a results directory (no runs.parquet, runs/ or "
                            f"experiment.json); --replace only replaces a results directory")
    if not root.parent.is_dir():
        raise UserError(f"--results {root}: directory {root.parent} does not exist")
    table = read_source(Path(path) if path is not None else None, kind, uri, experiment)
    step = detect_step(table, mapping, step)
    runs, curves, skipped = map_runs(table, mapping, step)
    if runs.empty:
        first = "; ".join(f"row {r}: {why}" for r, why in skipped.head(5).itertuples(index=False))
        raise UserError(f"{table.label.removeprefix('imported from ')}: no row could be imported "
                        f"({len(table.rows)} rows; {first or 'the table is empty'})")
    series = list(dict.fromkeys(runs["series"]))
    meta = {"name": experiment or (Path(path).stem if path is not None else root.name),
            "source": table.label, "imported": {"from": table.kind, "map": mapping, "step": step,
                                                 "rows": len(table.rows), "runs": len(runs),
                                                 "skipped": len(skipped),
                                                 "at": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds")},
            "series": {name: {} for name in series}}
    with atomic_directory(root) as staging:
        write_table(runs, staging / "runs.parquet")
        if len(curves):
            write_table(curves, staging / "curves.parquet")
        skipped.to_csv(staging / SKIPPED_FILE, index=False, quoting=csv.QUOTE_MINIMAL)
        write_json(meta, staging / "experiment.json")
    return Imported(root, runs, curves, skipped, table.kind, long=step is not None)
