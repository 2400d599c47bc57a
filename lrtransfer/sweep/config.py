"""Experiment files: TOML with [data], [model], [train], a [grid] and named [series.*].

Every run is resolved to a flat, JSON-able dict (`RunConfig.values`): the dataset and its
options under ``data.<key>``, the model and training keys by their bare names, the series
label, and the data and code fingerprints. A run's id is a hash of that dict
(``lrtransfer.run.provenance``), so a run is a pure function of its config, seed and thread count,
and results go stale when the data or the training code changes.

``seeds = N`` (top level) runs every cell with seeds 0 … N−1; a ``seed`` list in ``[grid]``
names them instead. A relative ``data.path`` is read from the experiment file's folder.

Grid values are lists (the cartesian product is taken); an LR grid can be written as
``{log2 = [lo, hi], step = 0.5}``. A series overrides any key, grid lists included, so each
series can carry its own LR window. Overrides from the command line (``--set key=value``)
take TOML values: ``lr=0.01``, ``width=[32,64]``, ``series.adam.lr={log2=[-10,-4],step=1}``.
"""
from __future__ import annotations

import itertools
import json
import math
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ..data import DATASETS, fingerprint
from ..errors import ConfigError, nearest
from ..models import FAMILIES, family, family_key, is_builder, load_builder, resolve_builder
from ..run import spec
from ..run.provenance import SCALE_AXES, code_fingerprint, run_id

TOP_LEVEL = {"name", "description", "data", "model", "train", "grid", "series", "seeds"}


@dataclass
class RunConfig:
    """One cell of the grid: the resolved values and the id derived from them."""
    values: dict

    @property
    def run_id(self) -> str:
        return run_id(self.values)

    @property
    def series(self) -> str:
        return self.values["series"]

    def describe(self) -> str:
        v = self.values
        return f"{v['series']} width={v['width']} depth={v['depth']} lr=2^{math.log2(v['lr']):.2f} seed={v['seed']}"


@dataclass
class Experiment:
    name: str
    data: dict
    model: dict
    train: dict
    grid: dict = field(default_factory=dict)
    series: dict = field(default_factory=dict)
    description: str = ""
    source: str = ""
    labels: dict = field(default_factory=dict)   # series -> display name (``label = "…"`` in its table)

    @cached_property
    def fingerprints(self) -> dict:
        """The data and code fingerprints every cell carries (the data is located, and hashed,
        once per experiment object)."""
        name, opts = self.data["dataset"], {k: v for k, v in self.data.items() if k != "dataset"}
        out = {"data_fingerprint": fingerprint(name, **opts), "code_fingerprint": code_fingerprint()}
        if "builder" in self.model:   # a user's model: its file's bytes are part of every run's id
            out["model_fingerprint"] = load_builder(self.model["builder"]).fingerprint
        return out

    def cells(self) -> list[RunConfig]:
        """Every run of the experiment, series by series, in grid order, fingerprints included."""
        return [RunConfig({**v, **self.fingerprints}) for v in self.resolved_values()]

    def resolved_values(self) -> list[dict]:
        """Every run's values, without the fingerprints (cheap: nothing is read)."""
        out = []
        for label, overrides in (self.series or {"default": {}}).items():
            out += self._series_cells(label, overrides)
        if not out:
            raise ConfigError("grid: the experiment resolves to no runs (an empty list in [grid] or a series?)")
        smallest = min(v["width"] for v in out)
        for v in out:
            _one_spelling(v, smallest)
        return out

    def _series_cells(self, label: str, overrides: dict) -> list[dict]:
        """The cells of one series: its overrides over the fixed keys and the grid, crossed."""
        fixed = {**self.model, **self.train}
        grid = dict(self.grid)
        for key, value in overrides.items():
            if isinstance(value, list):
                grid[key] = value
            else:
                fixed[key] = value
                grid.pop(key, None)
        keys = list(grid)
        out = []
        for combo in itertools.product(*(grid[k] for k in keys)):
            values = {**fixed, **dict(zip(keys, combo))}
            values = {"series": label, **{f"data.{k}": v for k, v in self.data.items()}, **values}
            why = spec.check_combination(values)
            if why:
                raise ConfigError(f"series {label}: {why}")
            out.append(values)
        return out

    def scale_axes(self) -> list[str]:
        """The scale-like keys (``SCALE_AXES``: width, depth, batch_size, steps, ...) that take
        more than one value."""
        cells = self.resolved_values()
        return [a for a in SCALE_AXES if len({c.get(a) for c in cells}) > 1]

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "data": self.data, "model": self.model,
                "train": self.train, "grid": self.grid, "series": self.series, "source": self.source,
                "labels": self.labels}

    def identity(self) -> dict:
        """What makes two sweeps the same experiment (one results directory): its name, its
        dataset and its architecture. Grids, LRs and seeds may grow; these may not change."""
        return {"name": self.name, "dataset": self.data.get("dataset"), "arch": self.model.get("arch")}


def _one_spelling(v: dict, smallest: int) -> None:
    """Give a resolved cell one spelling per run, so equal runs share a run id."""
    # `normalize = true` and `update = "normalize"` are the same run
    if v.get("normalize"):
        v["update"] = "normalize"
    v["normalize"] = v.get("update") == "normalize"
    # μP's base shapes: the experiment's smallest width unless given (other
    # parametrizations have none, and keep 0 so a grown grid leaves their ids alone)
    if v.get("param") == "mup":
        v["base_width"] = v.get("base_width") or smallest
    else:
        v["base_width"] = 0


# -- parsing ----------------------------------------------------------------------------------
def expand_values(key: str, value, where: str):
    """A grid entry: a list, or {log2 = [lo, hi], step = s} for powers of two."""
    if isinstance(value, dict):
        if set(value) - {"log2", "step"} or "log2" not in value:
            raise ConfigError(f"{where}.{key}: a range is written {{log2 = [lo, hi], step = 0.5}}, got {value!r}")
        lohi, step = value["log2"], value.get("step", 1)
        if (not isinstance(lohi, list) or len(lohi) != 2 or not all(isinstance(v, (int, float)) for v in lohi)
                or not isinstance(step, (int, float)) or step <= 0 or lohi[0] > lohi[1]):
            raise ConfigError(f"{where}.{key}: log2 needs [lo, hi] with lo <= hi and step > 0, got {value!r}")
        n = int(math.floor((lohi[1] - lohi[0]) / step + 1e-9)) + 1
        return [2.0 ** (lohi[0] + i * step) for i in range(n)]
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}.{key}: empty list; give at least one value")
        return value
    return value


def _check_value(key: str, value, where: str):
    """``value`` checked against the run spec's entry for ``key`` (type, choices, bounds)."""
    name = f"{where}.{key}"
    k = spec.BY_NAME.get(key) or family_key(key)
    if k is None:
        return value
    if k.choices is not None:
        if value not in k.choices:
            raise ConfigError(f"{name}: {value!r} is not allowed{nearest(value, k.choices)}; "
                              f"allowed: {', '.join(k.choices)}")
        return value
    if k.type is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: must be true or false, got {value!r}")
        return value
    if k.type is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{name}: must be an integer, got {value!r}")
    elif k.type is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ConfigError(f"{name}: must be a number, got {value!r}")
        value = float(value)
    elif k.type is str and not isinstance(value, str):
        raise ConfigError(f"{name}: must be a string, got {value!r}")
    if k.positive and value <= 0:
        raise ConfigError(f"{name}: must be positive, got {value!r}")
    if k.minimum is not None and value < k.minimum:
        raise ConfigError(f"{name}: must be >= {k.minimum:g}, got {value!r}")
    return value


def _allowed_model_keys(arch: str) -> set[str]:
    return set(spec.defaults("model")) | {k.name for k in family(arch).keys}


def _builder_section(model: dict, base_dir: str | Path | None) -> tuple[dict, set[str]]:
    """[model] for a user's builder (``arch = "file.py:function"``): the keys it declares
    (any, with ``**kwargs``), ``roles``, and ``builder``, the resolved spec every cell carries;
    the builder is imported here, so a missing file or function stops the sweep before it starts."""
    spec_ = resolve_builder(model["arch"], base_dir)
    builder = load_builder(spec_)
    allowed = set(spec.defaults("model")) | {"roles"} | (set(builder.options()) - {"attn_scale"})
    if builder.takes_any():
        allowed |= set(model)
    if "attn_scale" in model:
        raise ConfigError(f"model.attn_scale: lrtransfer sets it for {spec_} from param and base_width "
                          f"(1 under SP, sqrt(base_width/width) under μP); remove the key")
    for key in model:
        if key not in allowed:
            takes = ["width", "depth", *sorted(set(builder.options()) - {"attn_scale"})]
            raise ConfigError(f"model.{key}: the builder {spec_} takes no argument {key!r}{nearest(key, allowed)}; "
                              f"it takes: {', '.join(takes)} (and lrtransfer's param, base_width, roles)")
    roles = model.get("roles", {})
    if not isinstance(roles, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in roles.items()):
        raise ConfigError(f"model.roles: must be a table of parameter name = role, e.g. "
                          f"roles = {{ \"lm_head.weight\" = \"output\" }}; got {roles!r}")
    checked = {k: (v if k in ("arch", "roles") or k not in spec.BY_NAME else _check_value(k, v, "model"))
               for k, v in model.items()}
    checked.pop("roles", None)
    if roles:   # one JSON string: a runs-table column of plain values, hashed the same way every time
        checked["roles"] = json.dumps(roles, sort_keys=True)
    return {**checked, "builder": spec_}, allowed


def _any_model_keys() -> set[str]:
    """The model keys of any family: what a bare ``--set`` key may name."""
    return set(spec.defaults("model")) | {k.name for f in FAMILIES.values() for k in f.keys}


def _check_section(section: str, values: dict, allowed: set[str]) -> dict:
    out = {}
    for key, value in values.items():
        if key not in allowed:
            raise ConfigError(f"{section}.{key}: unknown key{nearest(key, allowed)}; allowed: {', '.join(sorted(allowed))}")
        out[key] = _check_value(key, value, section)
    return out


def _set_path(raw: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {p} is not a table")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, object]:
    """`key=value` with a TOML value (bare words are strings)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = (s.strip() for s in text.split("=", 1))
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def _set_series_key(raw: dict, key: str, value) -> None:
    """``--set series.<label>.<key>=…``: the series must exist."""
    declared = set(raw.get("series", {}) or {}) if isinstance(raw.get("series", {}), dict) else set()
    label = key.split(".")[1] if key.count(".") >= 1 else ""
    if label not in declared:
        raise ConfigError(f"--set {key}: no series {label!r} in this experiment{nearest(label, declared)}; "
                          f"series: {', '.join(sorted(declared)) or 'none'}")
    _set_path(raw, key, value)


def _set_bare_key(raw: dict, key: str, value) -> None:
    """A bare key applies to every cell: a list (or log2 range) becomes the grid's axis, a
    single value fixes the key; either way it replaces the series' own values."""
    for overrides in raw.get("series", {}).values():
        if isinstance(overrides, dict):
            overrides.pop(key, None)
    raw.get("grid", {}).pop(key, None)
    if key == "seed":
        raw.pop("seeds", None)
    if isinstance(value, (list, dict)):
        _set_path(raw, f"grid.{key}", value)
    else:
        _set_path(raw, f"{'train' if key in spec.defaults('train') else 'model'}.{key}", value)


def _apply_override(raw: dict, text: str) -> None:
    """One ``--set key=value`` written into the parsed experiment ``raw``."""
    key, value = parse_override(text)
    head = key.split(".")[0]
    bare = set(spec.defaults("train")) | _any_model_keys()
    if head == "series":
        _set_series_key(raw, key, value)
    elif head in TOP_LEVEL:
        if key == "seeds":  # replaces a seed list as a whole
            raw.get("grid", {}).pop("seed", None)
        if key == "data.path" and isinstance(value, str):  # typed on the command line: from the cwd
            value = str(Path(value).expanduser().resolve())
        if key == "model.arch" and is_builder(value):
            value = resolve_builder(value, Path.cwd())
        _set_path(raw, key, value)
    elif key in bare:
        if key == "arch" and is_builder(value):   # typed on the command line: from the cwd
            value = resolve_builder(value, Path.cwd())
        _set_bare_key(raw, key, value)
    else:
        raise ConfigError(f"--set {key}: unknown key{nearest(key, bare | {'seeds'})}; use a model or train key "
                          f"(lr, width, ...), seeds, or a dotted path (data.samples, series.adam.lr)")


def _check_layout(raw: dict, name: str) -> str:
    """The top-level keys and tables; the experiment's name."""
    for key in raw:
        if key not in TOP_LEVEL:
            raise ConfigError(f"{key}: unknown top-level key{nearest(key, TOP_LEVEL)}; "
                              f"allowed: {', '.join(sorted(TOP_LEVEL))}")
    for sect in ("data", "model", "train", "grid", "series"):
        if not isinstance(raw.get(sect, {}), dict):
            raise ConfigError(f"[{sect}] must be a table")
    name = raw.get("name", name)
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ConfigError(f"name: must be a non-empty string without '/', got {name!r}")
    return name


def _data_section(raw: dict, base_dir: str | Path | None) -> dict:
    """[data], its relative ``path`` read from ``base_dir`` (the experiment file's folder)."""
    data = dict(raw.get("data", {}))
    if isinstance(data.get("path"), str) and base_dir is not None:
        path = Path(data["path"]).expanduser()
        if not path.is_absolute():  # relative to the experiment file, not to where the command runs
            data["path"] = str((Path(base_dir) / path).resolve())
    if "dataset" not in data:
        raise ConfigError("data.dataset: missing; e.g. dataset = \"mnist1d\"")
    if data["dataset"] not in DATASETS:
        raise ConfigError(f"data.dataset: unknown dataset {data['dataset']!r}; allowed: {', '.join(DATASETS)}")
    return data


def _check_grid(values: dict, where: str, allowed: set[str]) -> dict:
    """Grid axes (or a series' overrides): known keys, ranges expanded, each value checked."""
    out = {}
    for key, value in values.items():
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown key{nearest(key, allowed)}; "
                              f"allowed: {', '.join(sorted(allowed))}")
        value = expand_values(key, value, where)
        if isinstance(value, list):
            out[key] = [_check_value(key, v, where) for v in value]
        else:
            out[key] = _check_value(key, value, where)
    return out


def _seed_axis(raw: dict, grid: dict) -> None:
    """``seeds = N``: the grid's seed axis 0 … N−1."""
    seeds = raw["seeds"]
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ConfigError(f"seeds: must be a positive integer (runs every cell with seeds 0 … seeds−1), got {seeds!r}")
    if "seed" in grid or any("seed" in (o or {}) for o in raw.get("series", {}).values() if isinstance(o, dict)):
        raise ConfigError("seeds: give either seeds = N or a seed list in [grid], not both")
    grid["seed"] = list(range(seeds))


def _series_sections(raw: dict, allowed: set[str]) -> tuple[dict, dict]:
    """The checked [series.*] overrides and the display labels they name."""
    series, labels = {}, {}
    for label, overrides in raw.get("series", {}).items():
        if not isinstance(overrides, dict):
            raise ConfigError(f"series.{label}: must be a table of overrides, got {overrides!r}")
        overrides = dict(overrides)
        if "label" in overrides:   # how figures name the series; not a run key (run ids ignore it)
            shown = overrides.pop("label")
            if not isinstance(shown, str) or not shown.strip():
                raise ConfigError(f"series.{label}.label: must be a non-empty string (the name figures show), "
                                  f"got {shown!r}")
            labels[label] = shown.strip()
        series[label] = _check_grid(overrides, f"series.{label}", allowed)
    return series, labels


def _check_cells(exp: Experiment) -> None:
    """Cross-key checks on every resolved cell: the schedule's and the model family's."""
    for v in exp.resolved_values():
        if v["warmup"] >= v["steps"] and v["warmup"] > 0:
            raise ConfigError(f"train.warmup: {v['warmup']} must be below steps={v['steps']} (series {v['series']})")
        check = FAMILIES[v["arch"]].check if v["arch"] in FAMILIES else None
        why = check(v) if check is not None else None
        if why:
            raise ConfigError(f"{why} (series {v['series']})")


def experiment_from_dict(raw: dict, name: str, overrides: list[str] = (), source: str = "",
                         base_dir: str | Path | None = None) -> Experiment:
    """Resolve a parsed experiment file (plus ``--set`` overrides) into an ``Experiment``.

    ``base_dir``: the experiment file's folder, against which a relative ``data.path`` is read.
    """
    raw = json.loads(json.dumps(raw))  # a private copy
    for text in overrides:
        _apply_override(raw, text)
    name = _check_layout(raw, name)
    data = _data_section(raw, base_dir)
    model = {**spec.defaults("model"), **raw.get("model", {})}
    if is_builder(model["arch"]):
        model, model_allowed = _builder_section(model, base_dir)
    else:
        _check_value("arch", model["arch"], "model")
        model_allowed = _allowed_model_keys(model["arch"])
        model = _check_section("model", model, model_allowed)
    train_defaults = spec.defaults("train")
    train = _check_section("train", {**train_defaults, **raw.get("train", {})}, set(train_defaults))
    grid_allowed = (model_allowed | set(train_defaults)) - {"arch"}
    grid = {k: v if isinstance(v, list) else [v]
            for k, v in _check_grid(raw.get("grid", {}), "grid", grid_allowed).items()}
    if "seeds" in raw:
        _seed_axis(raw, grid)
    series, labels = _series_sections(raw, grid_allowed)
    exp = Experiment(name=name, data=data, model=model, train=train, grid=grid, series=series,
                     description=str(raw.get("description", "")), source=source, labels=labels)
    _check_cells(exp)
    return exp


def load_experiment(path: str | Path, overrides: list[str] = ()) -> Experiment:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: experiment file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read experiment file ({e})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    return experiment_from_dict(raw, name=path.stem, overrides=overrides, source=text, base_dir=path.parent)
