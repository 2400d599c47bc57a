"""Errors a user can fix. The CLI turns every `UserError` into one message and exit code 2."""
import difflib


class UserError(Exception):
    """Bad input from the user: a config key, a path, a value. The message names it."""


class ConfigError(UserError):
    """An experiment file or override that cannot be resolved into runs."""


class DataError(UserError):
    """A dataset that is missing or unreadable; the message says how to get it."""


# What other tools call our keys (torch, HF Trainer, nanoGPT, optax): spelling is not the only
# way to miss a name, and difflib does not see that `learning_rate` means `lr`.
SYNONYMS = {"learning_rate": "lr", "learningrate": "lr", "eta": "lr", "wd": "weight_decay",
            "decay": "weight_decay", "num_steps": "steps", "max_steps": "steps", "iters": "steps",
            "iterations": "steps", "max_iters": "steps", "bs": "batch_size", "batch": "batch_size",
            "opt": "optimizer", "optim": "optimizer", "n_layer": "depth", "n_layers": "depth",
            "num_layers": "depth", "layers": "depth", "blocks": "depth", "hidden": "width",
            "hidden_size": "width", "hidden_dim": "width", "d_model": "width", "n_embd": "width",
            "channels": "width", "n_head": "heads", "num_heads": "heads", "warmup_steps": "warmup",
            "scheduler": "schedule", "lr_schedule": "schedule", "b1": "beta1", "b2": "beta2",
            "epsilon": "eps", "seeds_list": "seed", "precision": "dtype", "parametrization": "param"}


def nearest(name: str, allowed) -> str:
    """`` (did you mean X?)`` for the allowed name ``name`` is another tool's word for, or the
    closest spelling, or an empty string."""
    allowed = [str(a) for a in allowed]
    if SYNONYMS.get(str(name).lower()) in allowed:
        return f" (did you mean {SYNONYMS[str(name).lower()]!r}?)"
    close = difflib.get_close_matches(str(name), allowed, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(option: str, value, allowed) -> None:
    """UserError naming the option, the nearest allowed value and all of them."""
    allowed = [str(a) for a in allowed]
    if value not in allowed:
        raise UserError(f"{option} {value!r}: allowed: {', '.join(allowed)}{nearest(value, allowed)}")
