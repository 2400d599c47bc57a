"""Each weight's role in a plain ``torch.nn.Module``, found from which of its dimensions scale.

The model is built at two widths (the second on the meta device: shapes only, no memory and
no random draws) and every parameter's shape compared, as the mup package's base shapes do:
a matrix whose output and input sides both grow with width is ``hidden``, one whose output
side alone grows is an ``input`` layer, one whose input side alone grows is an ``output``
layer (a readout), and 1-D parameters (biases, norm gains) are ``vector``s. An
``nn.Embedding``'s table (vocabulary × width) is read as the lookup it is: an input layer.
A weight tied to several modules (an embedding reused as the readout) is one parameter,
listed once with all its names. ``[model] roles = { "name" = "input" | "hidden" | "output" }``
settles or overrides any of them by name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError, nearest

ROLES = ("input", "hidden", "output", "vector")
MATRIX_ROLES = ("input", "hidden", "output")


@dataclass
class Weight:
    """One parameter of a plain module: its names, owners, shape kind and role."""
    name: str                       # its first name in ``named_parameters`` order
    aliases: tuple[str, ...]        # every name it has (more than one when tied)
    param: nn.Parameter
    owners: tuple[nn.Module, ...]   # the module holding it under each alias
    kind: str                       # "matrix" (out, in), "kernel" (out, in, *k), "embedding" (vocab, d), "vector"
    role: str = ""
    found: str = "shapes"           # "shapes", or "set" when [model] roles names it

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)

    def fans(self, shape: tuple[int, ...] | None = None) -> tuple[int, int]:
        """(fan_in, fan_out) as torch counts them for this kind of layer (an embedding's fan-in
        is its vocabulary; a vector maps the constant 1 to its entries)."""
        shape = self.shape if shape is None else shape
        if self.kind == "vector":
            return 1, math.prod(shape)
        if self.kind == "embedding":
            return shape[0], shape[1]
        receptive = math.prod(shape[2:])
        return shape[1] * receptive, shape[0] * receptive

    def readouts(self) -> list[nn.Module]:
        """The modules that use this weight as a readout: an output weight's owners, and the
        Linear a tied embedding table is shared with."""
        if self.role == "output":
            return list(self.owners)
        if self.kind == "embedding":
            return [m for m in self.owners if isinstance(m, nn.Linear)]
        return []


def _kind(param: nn.Parameter, owner: nn.Module) -> str:
    if param.dim() <= 1:
        return "vector"
    if isinstance(owner, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding"
    return "matrix" if param.dim() == 2 else "kernel"


def weights_of(net: nn.Module) -> list[Weight]:
    """Every parameter of ``net`` once, in ``named_parameters`` order, with all its names."""
    by_id: dict[int, Weight] = {}
    for name, p in net.named_parameters(remove_duplicate=False):
        owner = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
        w = by_id.get(id(p))
        if w is None:
            by_id[id(p)] = Weight(name, (name,), p, (owner,), _kind(p, owner))
        else:
            w.aliases += (name,)
            w.owners += (owner,)
            if isinstance(owner, (nn.Embedding, nn.EmbeddingBag)) and p.dim() == 2:
                w.kind = "embedding"   # a table tied to a readout is still a lookup table
    return list(by_id.values())


def _shapes(net: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in net.named_parameters(remove_duplicate=False)}


def _by_shapes(w: Weight, other: tuple[int, ...] | None) -> str | None:
    """The role the two shapes give, or None when they do not decide it."""
    if w.kind == "vector":
        return "vector"
    if other is None or len(other) != len(w.shape):
        return None
    if w.kind == "embedding":
        grows_in, grows_out = other[0] != w.shape[0], other[1] != w.shape[1]
    else:
        grows_out, grows_in = other[0] != w.shape[0], other[1] != w.shape[1]
    if grows_in and grows_out:
        return "hidden"
    if grows_out:
        return "input"
    if grows_in:
        return "output"
    return None


def find_roles(net: nn.Module, probe: nn.Module, roles: dict | None = None, *, where: str = "model",
               widths: tuple[int, int] = (0, 0)) -> list[Weight]:
    """``net``'s weights with their roles, from ``net`` and ``probe`` (the same builder at
    another width; ``widths``: the two, for messages) and the ``roles`` table (name -> role).

    ConfigError, naming ``where``, for a roles entry that names no parameter or no allowed
    role, for a model none of whose weights changes shape with width, and for weights whose
    shapes leave the role open (listed, with the key that settles them)."""
    weights = weights_of(net)
    roles = dict(roles or {})
    names = {a: w for w in weights for a in w.aliases}
    for name, role in roles.items():
        if name not in names:
            raise ConfigError(f"model.roles: {name!r} is not a parameter of {where}{nearest(name, names)}; "
                              f"its parameters: {', '.join(names)}")
        if role not in ROLES:
            raise ConfigError(f"model.roles.{name}: {role!r} is not a role; allowed: {', '.join(ROLES)}")
        if (role == "vector") != (names[name].kind == "vector"):
            raise ConfigError(f"model.roles.{name}: {role!r} does not fit a parameter of shape "
                              f"{list(names[name].shape)}; allowed: "
                              + ("vector" if names[name].kind == "vector" else ", ".join(MATRIX_ROLES)))
    other = _shapes(probe)
    open_ = []
    for w in weights:
        set_ = [roles[a] for a in w.aliases if a in roles]
        if set_:
            w.role, w.found = set_[0], "set"
            continue
        w.role = _by_shapes(w, other.get(w.name)) or ""
        if not w.role:
            open_.append(w)
    if not any(w.role in ("hidden", "input", "output") and w.found == "shapes" for w in weights) and not roles:
        raise ConfigError(f"{where}: no weight changes shape between width {widths[0]} and width {widths[1]}; "
                          f"the builder must size its layers from its width argument")
    if open_:
        listed = "; ".join(f"{w.name} {list(w.shape)}" for w in open_)
        raise ConfigError(f"{where}: the role of {len(open_)} weight(s) does not follow from how they scale "
                          f"with width (neither side grows): {listed}. Settle each in the experiment file: "
                          f"[model] roles = {{ \"{open_[0].name}\" = \"input\" }} (allowed: "
                          f"{', '.join(MATRIX_ROLES)})")
    return weights


def probe_build(build, width: int) -> nn.Module:
    """``build(width)`` for its shapes only: on the meta device (no memory, no random draws),
    or where the builder cannot run there, on the CPU without touching the global random stream."""
    try:
        with torch.device("meta"):
            return build(width)
    except ConfigError:
        raise
    except Exception:   # e.g. an init that needs real numbers (QR, .item())
        with torch.random.fork_rng(devices=[]):
            return build(width)
