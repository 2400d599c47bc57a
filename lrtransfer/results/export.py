"""``lrtransfer export``: a results directory's runs in TensorBoard, MLflow or Weights & Biases,
one run there per recorded run, config as hyperparameters, curves as steps (docs/results.md,
"Exports")."""
from __future__ import annotations

import importlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import UserError, nearest
from ..run.provenance import MODEL_SCALE_AXES, is_metadata
from .store import atomic_directory, load_results, write_json

# what each target needs importable, and the extra that installs it
NEEDS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
EXPORT_TARGETS = tuple(NEEDS)
FINAL_METRICS = ("final_train_loss", "final_test_loss", "final_test_acc", "wall_seconds")
CURVE_SERIES = ("train_loss", "test_loss", "lr")
RUN_TAG = "lrtransfer.run_id"
CONFIG_ALWAYS = ("series", "lr", "seed")   # config, though never analysis groups (run.provenance.METADATA)
COMPLETED = ("done", "diverged")   # a run that ran to its end: a diverged run is a result, not a failure


@dataclass
class Exported:
    """What an export did: where, how many runs written, how many already there."""
    target: str
    where: str
    written: int
    skipped: int = 0


def require(target: str):
    """The library ``target`` needs, imported; UserError naming its extra when it is missing."""
    if target not in EXPORT_TARGETS:
        raise UserError(f"--to {target!r}: allowed: {', '.join(EXPORT_TARGETS)}{nearest(target, EXPORT_TARGETS)}")
    try:
        return importlib.import_module(NEEDS[target])
    except ImportError:
        raise UserError(f"--to {target}: the {NEEDS[target]} package is not installed; "
                        f"install the extra: pip install 'lrtransfer[{target}]'") from None


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _plain(v):
    """A param value as TensorBoard / MLflow take it: bool, int, float or str; None for missing."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    if hasattr(v, "item"):   # numpy scalars
        v = v.item()
    return v if isinstance(v, (bool, int, float, str)) else str(v)


def config(row: dict) -> dict:
    """A run's config: every column that is not a metric, timing or provenance, plus series,
    lr and seed; missing values left out."""
    keys = [k for k in row if k in CONFIG_ALWAYS or not is_metadata(k)]
    return {k: v for k in keys if (v := _plain(row[k])) is not None}


def run_name(row: dict) -> str:
    scales = " ".join(f"{a}={int(row[a])}" for a in MODEL_SCALE_AXES if _finite(row.get(a)))
    lr = f"lr=2^{math.log2(row['lr']):g}" if _finite(row.get("lr")) and row["lr"] > 0 else ""
    seed = f"seed={int(row['seed'])}" if _finite(row.get("seed")) else ""
    return " ".join(p for p in (str(row.get("series", "run")), scales, lr, seed) if p)


def folder_names(rows: list[dict]) -> list[str]:
    """One directory name per run: its ``run_name``, made safe for a path, with `` run=<run id>``
    appended to every run whose name another run shares (runs differing only in a key the name
    leaves out)."""
    names = [run_name(row).replace("/", "_").replace("\\", "_") for row in rows]
    counts = {name: names.count(name) for name in names}
    return [f"{name} run={row['run_id']}" if counts[name] > 1 else name for name, row in zip(names, rows)]


def finals(row: dict) -> dict:
    return {k: float(row[k]) for k in FINAL_METRICS if k in row and _finite(row[k])}


def curve_points(curves: pd.DataFrame, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """{series: [(step, value), ...]} of one run's curve, finite values only."""
    c = curves[curves["run_id"] == run_id].sort_values("step") if not curves.empty else curves
    return {name: [(int(s), float(v)) for s, v in zip(c["step"], c[name]) if _finite(float(v))]
            for name in CURVE_SERIES if name in c}


def export(results_dir, to: str, uri: str | None = None, experiment: str | None = None,
           project: str | None = None, entity: str | None = None, online: bool = False) -> Exported:
    """Export every recorded run of ``results_dir`` to ``to`` (tensorboard | mlflow | wandb); see
    the module doc."""
    require(to)
    _check_options(to, uri=uri, experiment=experiment, project=project, entity=entity, online=online)
    root = Path(results_dir)
    runs, curves = load_results(root)
    rows = runs.to_dict("records")
    if to == "tensorboard":
        return _tensorboard(rows, curves, Path(uri) if uri else root / "tensorboard")
    name = (experiment or project) or ((_recorded_name(root)) or root.resolve().name)
    if to == "wandb":
        return _wandb(rows, curves, root, name, entity, online)
    return _mlflow(rows, curves, uri or f"sqlite:///{(root / 'mlflow.db').resolve()}", name)


# the options each target reads; any other given is refused rather than silently ignored
TARGET_OPTIONS = {"tensorboard": ("--uri",), "mlflow": ("--uri", "--experiment"),
                  "wandb": ("--project", "--entity", "--online")}


def _check_options(to: str, **given) -> None:
    for key, value in given.items():
        option = f"--{key}"
        if value not in (None, False) and option not in TARGET_OPTIONS[to]:
            users = [t for t, options in TARGET_OPTIONS.items() if option in options]
            raise UserError(f"{option}: not an option of --to {to} (it takes {', '.join(TARGET_OPTIONS[to])}); "
                            f"{option} is for --to {' / '.join(users)}")


def _recorded_name(root: Path) -> str | None:
    from .store import ResultStore
    return (ResultStore(root).experiment() or {}).get("name")


# ----------------------------------------------------------------------------- tensorboard

def _tensorboard(rows: list[dict], curves: pd.DataFrame, logdir: Path) -> Exported:
    from torch.utils.tensorboard import SummaryWriter
    if not logdir.parent.is_dir():
        raise UserError(f"--uri {logdir}: directory {logdir.parent} does not exist")
    if logdir.exists() and not logdir.is_dir():
        raise UserError(f"--uri {logdir}: exists and is not a directory")
    with atomic_directory(logdir) as staging:
        for row, folder in zip(rows, folder_names(rows)):
            with SummaryWriter(log_dir=str(staging / folder)) as writer:
                for name, points in curve_points(curves, row["run_id"]).items():
                    for step, value in points:
                        writer.add_scalar(name, value, step)
                writer.add_text("run", f"{run_name(row)} ({row['status']}; run id {row['run_id']})")
                # the final metrics go with the hyperparameters, so the HParams table can sort by them
                writer.add_hparams(config(row), {f"hparam/{k}": v for k, v in finals(row).items()}, run_name=".")
    return Exported("tensorboard", str(logdir), len(rows))


# ----------------------------------------------------------------------------- mlflow

def _mlflow(rows: list[dict], curves: pd.DataFrame, uri: str, name: str) -> Exported:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient
    from mlflow.utils.validation import MAX_METRICS_PER_BATCH
    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found is not None else client.create_experiment(name)
    except Exception as e:  # an unreachable server, a bad URI: the user's input, said once
        raise UserError(f"--uri {uri}: MLflow could not open it: {str(e).splitlines()[0]}") from None
    done = {r.data.tags.get(RUN_TAG) for r in client.search_runs([experiment_id], max_results=50000)}
    created = []
    try:
        for row in rows:
            if row["run_id"] in done:
                continue
            run = client.create_run(experiment_id, run_name=run_name(row),
                                    tags={RUN_TAG: row["run_id"], "status": str(row["status"]),
                                          "series": str(row.get("series", ""))})
            created.append(run.info.run_id)
            metrics = [Metric(k, v, 0, int(row.get("steps") or 0)) for k, v in finals(row).items()]
            metrics += [Metric(key, value, 0, step) for key, points in curve_points(curves, row["run_id"]).items()
                        for step, value in points]
            params = [Param(k, str(v)) for k, v in config(row).items()]
            for i in range(0, max(len(metrics), 1), MAX_METRICS_PER_BATCH):
                client.log_batch(run.info.run_id, metrics=metrics[i:i + MAX_METRICS_PER_BATCH],
                                 params=params if i == 0 else [])
            client.set_terminated(run.info.run_id, "FINISHED" if row["status"] in COMPLETED else "FAILED")
    except BaseException:
        for run_id in created:   # nothing half-written: the runs of a failed export go again
            client.delete_run(run_id)
        raise
    return Exported("mlflow", f"{uri} (experiment {name!r})", len(created), len(rows) - len(created))


# ----------------------------------------------------------------------------- weights & biases

WANDB_MANIFEST = "exported.json"   # under RESULTS_DIR/wandb: {destination: [lrtransfer run ids]}
WANDB_FORBIDDEN = "/\\#?%:"        # characters W&B refuses in project and entity names
# wandb.Settings for an export: nothing printed (the CLI prints its one line), this process's
# stdout left alone (console capture would wrap it), and nothing collected about this machine or
# repository: the exported runs describe the results, not the process that exported them
WANDB_SETTINGS = dict(silent=True, console="off", x_disable_stats=True, x_disable_meta=True,
                      x_save_requirements=False, disable_git=True, save_code=False, disable_job_creation=True)


def wandb_history(points: dict[str, list[tuple[int, float]]]) -> list[tuple[int, dict[str, float]]]:
    """``curve_points`` as W&B logs them: one ``{series: value}`` row per step, steps ascending."""
    by_step: dict[int, dict[str, float]] = {}
    for name, series in points.items():
        for step, value in series:
            by_step.setdefault(step, {})[name] = value
    return sorted(by_step.items())


def _wandb(rows: list[dict], curves: pd.DataFrame, root: Path, project: str, entity: str | None,
           online: bool) -> Exported:
    import wandb
    for option, value in (("--project", project), ("--entity", entity)):
        if value is not None and (not value.strip() or len(value) > 128 or any(c in value for c in WANDB_FORBIDDEN)):
            raise UserError(f"{option} {value!r}: W&B names are 1-128 characters without any of "
                            f"{' '.join(WANDB_FORBIDDEN)}")
    wandb.setup(settings=wandb.Settings(silent=True))   # so that even the login check prints nothing
    # credentials from WANDB_API_KEY, wandb's settings or ~/.netrc; never an interactive prompt, and
    # not verified here: that would be a network call before the first run
    if online and not wandb.login(prompt=False, verify=False):
        raise UserError("--online: not logged in to W&B; run `wandb login` (or set WANDB_API_KEY) first, "
                        "or export without --online: offline runs under RESULTS_DIR/wandb, uploaded later "
                        "with `wandb sync`")
    mode = "online" if online else "offline"
    manifest = root / "wandb" / WANDB_MANIFEST
    # the runs already written for this destination; offline and online, and each project, count apart
    destination = f"{mode}:{entity + '/' if entity else ''}{project}"
    exported = _read_manifest(manifest)
    done = set(exported.get(destination, []))
    written = 0
    for row in rows:
        rid = row["run_id"]
        if rid in done:
            continue
        # the lrtransfer run id is the W&B run id (so the offline directory names it) and in the config
        try:
            run = wandb.init(mode=mode, dir=str(root), project=project, entity=entity, id=rid, name=run_name(row),
                             group=str(row.get("series", "")), config={**config(row), "run_id": rid},
                             settings=wandb.Settings(**WANDB_SETTINGS), reinit="create_new")
        except wandb.errors.Error as e:   # a server that refuses the project or entity: said once
            raise UserError(f"W&B could not start run {rid} in {destination}: {str(e).splitlines()[0]}") from None
        try:
            for step, values in wandb_history(curve_points(curves, rid)):
                run.log(values, step=step)
            run.summary.update({**finals(row), "status": str(row["status"])})
        except BaseException:
            run.finish(exit_code=1)
            if not online:   # a half-written offline run is removed, so a later export writes it whole
                shutil.rmtree(Path(run.dir).parent, ignore_errors=True)
            raise
        run.finish(exit_code=0 if row["status"] in COMPLETED else 1)
        # recorded after each run, atomically: an export stopped part-way keeps the runs it finished
        done.add(rid)
        exported[destination] = sorted(done)
        write_json(exported, manifest)
        written += 1
    local = root / "wandb"
    where = (f"W&B project {destination.partition(':')[2]!r} (local copies in {local})" if online else
             f"{local} (offline, project {project!r}{f', entity {entity!r}' if entity else ''}; "
             f"upload with `wandb sync {local}/offline-run-*`)")
    return Exported("wandb", where, written, len(rows) - written)


def _read_manifest(path: Path) -> dict[str, list[str]]:
    if not path.exists():
        return {}
    try:
        found = json.loads(path.read_text())
        if isinstance(found, dict) and all(isinstance(v, list) for v in found.values()):
            return found
        problem = "not a {destination: [run ids]} object"
    except (OSError, ValueError) as e:
        problem = str(e)
    raise UserError(f"{path}: unreadable ({problem}); remove it to export every run again")
