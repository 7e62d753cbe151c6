"""arfuse: fuse all_reduce + residual add + RMSNorm (+FP8) under torch.compile, and prove the
compiled model stays dynamic in num_tokens.

    fusion = arfuse.AllReduceFusionPass()            # optional config=arfuse.FusionConfig(...)
    compiled = torch.compile(model, options={"post_grad_custom_post_pass": fusion})
    fusion.num_matches

The public names load on first use, so `import arfuse` (and every `arfuse` command that needs
no model: --help, rules, patterns, thresholds, audit --trace) costs no torch import. The
`arfuse::` custom ops register as soon as torch is imported, before or after arfuse: no graph
can reference them earlier.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it ("" = the module itself)
_LAZY = {
    "AllReduceFusionPass": "arfuse.fusion",
    "FusionConfig": "arfuse.config",
    "FusionSpec": "arfuse.patterns.spec",
    "all_specs": "arfuse.patterns.spec",
    "compile": "arfuse.ranges",
    "ops": "arfuse.ops",
}

__all__ = ["AllReduceFusionPass", "FusionConfig", "FusionSpec", "all_specs", "compile", "ops"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if (
        module is None
        and not name.startswith("_")
        and importlib.util.find_spec(f"arfuse.{name}") is not None
    ):
        module = f"arfuse.{name}"  # a submodule: `arfuse.ranges.backend(...)` after `import arfuse`
    if module is None:
        raise AttributeError(f"module 'arfuse' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if module == f"arfuse.{name}" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def _register_ops() -> None:
    import warnings

    try:
        importlib.import_module("arfuse.ops")
    except Exception as exc:  # noqa: BLE001 - never break the user's `import torch`
        warnings.warn(
            f"arfuse: registering the arfuse:: ops failed ({type(exc).__name__}: "
            f"{exc}); torch.ops.arfuse.* stays unavailable",
            stacklevel=2,
        )


class _OpsAfterTorch:
    """An import hook: when torch finishes importing, register the arfuse:: ops."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "torch":
            return None
        # ask the other finders (asking importlib would ask this one again); a spec may also be
        # found without being imported (`importlib.util.find_spec("torch")`), so stay in place
        # until torch really runs
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_register(module: Any) -> None:
            exec_module(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _register_ops()

        loader.exec_module = exec_then_register
        return spec


if "torch" in sys.modules:
    _register_ops()
elif not any(isinstance(f, _OpsAfterTorch) for f in sys.meta_path):
    sys.meta_path.insert(0, _OpsAfterTorch())
