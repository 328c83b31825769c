"""Autotuning of the kernels: a few candidate configurations per launch, measured on the GPU, recorded for results.

Each kernel has a function ``candidates(args) -> [config dict, ...]`` that lists, for one launch's arguments, the
tile sizes, warps and stages worth measuring there (the first is the default). Every candidate of every launch the
model makes compiles for sm_90a without register spills (``tests/kernels/test_*_aot.py``, ahead of time).
:class:`Tuned` wraps the kernel in ``triton.autotune`` over the union of all candidates, keyed on shape; its
``early_config_prune`` keeps the launch's own candidates, so the first GPU call of each shape key times those few
and later calls reuse the fastest (``TRITON_PRINT_AUTOTUNING=1`` prints the choice).

Under the Triton interpreter (CPU tests), and with ``FASTMTL_TRITON_FIXED_CONFIG=1`` (the GPU suite's sanitizer
runs: one known configuration per launch, no timing runs under instrumentation), only the first candidate runs,
launched directly: no timing, so each kernel runs once. Traced by ``torch.compile`` (``triton_op`` +
``wrap_triton``), the pruned candidates are handed to Inductor, which times them itself; :func:`chosen_configs`
reports the eager ``triton.autotune`` choices (and the interpreter's fixed ones), not Inductor's.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import triton
from torch.library import wrap_triton

from ._utils import INTERPRET

FIXED_CONFIG_ENV = "FASTMTL_TRITON_FIXED_CONFIG"

LAUNCH_OPTIONS = ("num_warps", "num_stages")

_TUNED: dict[str, Tuned] = {}


def as_config(params: dict) -> triton.Config:
    """Config dict (constexprs + ``num_warps`` / ``num_stages``) -> ``triton.Config``."""
    kwargs = {k: v for k, v in params.items() if k not in LAUNCH_OPTIONS}
    return triton.Config(kwargs, num_warps=params["num_warps"], num_stages=params.get("num_stages", 3))


def as_dict(config: triton.Config) -> dict:
    """``triton.Config`` -> JSON-able config dict (the inverse of :func:`as_config`)."""
    return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}


def split(params: dict) -> tuple[dict, dict]:
    """Config dict -> (constexprs, launch options), as ``triton.compile`` and a direct launch take them."""
    options = {k: params.get(k, 3) for k in LAUNCH_OPTIONS}
    return {k: v for k, v in params.items() if k not in LAUNCH_OPTIONS}, options


class Tuned:
    """A JIT kernel with its candidate configurations; :meth:`launch` runs it autotuned (one config if interpreted).

    Args:
        fn: the ``@triton.jit`` kernel (kept untouched for ahead-of-time compilation and explicit launches).
        candidates: launch arguments by name -> candidate config dicts, best guess first (pure Python on ints,
            dtypes and shapes: ``torch.compile`` traces it).
        all_configs: every config dict ``candidates`` can return, for any launch.
        key: argument names of the autotuning key (Triton appends the dtypes of the tensor arguments).
    """

    def __init__(self, fn, candidates: Callable[[dict], list[dict]], all_configs: list[dict], key: list[str]):
        self.fn, self.candidates, self.key = fn, candidates, list(key)
        configs, seen = [], set()
        for params in all_configs:
            if (frozen := tuple(sorted(params.items()))) not in seen:
                seen.add(frozen)
                configs.append(as_config(params))
        # A second config keeps Triton's multi-config path (and so the pruning) even where only one exists.
        self.tuner = triton.autotune(
            configs=configs if len(configs) > 1 else configs * 2,
            key=self.key,
            prune_configs_by={"early_config_prune": self._prune},
        )(fn)
        self._interpreted: dict[str, dict] = {}
        _TUNED[fn.__name__] = self

    def _prune(self, configs, named_args, **kwargs):
        wanted = self.candidates({**named_args, **kwargs})
        by_params = {tuple(sorted(as_dict(c).items())): c for c in configs}
        pruned = [by_params[tuple(sorted(w.items()))] for w in wanted if tuple(sorted(w.items())) in by_params]
        if not pruned:
            raise ValueError(f"{self.fn.__name__}: no autotuning config among {wanted}")
        return pruned

    def launch(self, grid, **args) -> None:
        """Launches over ``grid`` (a callable of the config, or a tuple); ``args`` exclude the tuned parameters."""
        if INTERPRET or os.environ.get(FIXED_CONFIG_ENV) == "1":
            params = self.candidates(args)[0]
            self._interpreted[_key_string(self.key, args)] = params
            const, options = split(params)
            self.fn[grid](**args, **const, **options)
        else:
            wrap_triton(self.tuner)[grid](**args)

    def chosen(self) -> dict:
        """Shape key -> the config autotuning chose (interpreter: the first candidate) in this process."""
        out = dict(self._interpreted)
        for key, config in self.tuner.cache.items():
            out[_cache_key_string(self.key, key)] = as_dict(config)
        return out


def _key_string(names: list[str], args: dict) -> str:
    """Readable shape key of one launch: the key arguments, then the dtypes of the tensor arguments."""
    parts = [f"{name}={args[name]}" for name in names if name in args]
    parts += [str(v.dtype).replace("torch.", "") for v in args.values() if hasattr(v, "dtype")]
    return ",".join(parts)


def _cache_key_string(names: list[str], key: tuple) -> str:
    """``triton.autotune``'s cache key (key values, then dtype strings) in :func:`_key_string`'s format."""
    values = [f"{name}={value}" for name, value in zip(names, key)]
    return ",".join(values + [str(d).replace("torch.", "") for d in key[len(names) :]])


def chosen_configs() -> dict:
    """Kernel name -> shape key -> chosen config dict (JSON-able) for every tuned kernel used in this process."""
    return {name: chosen for name, tuned in sorted(_TUNED.items()) if (chosen := tuned.chosen())}
