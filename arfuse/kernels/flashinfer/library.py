"""FlashInfer, imported lazily: `load()` gives (flashinfer.comm, kernel module) or None.

Imported only on the first CUDA call, after the caller has put a tensor on its device:
`import flashinfer.comm` asserts unless CUDA was touched through torch first. A failure (not
installed, JIT or load error) is remembered, so every later call is a dictionary lookup.
"""

from __future__ import annotations

import warnings
from typing import Any

_comm: Any = None  # flashinfer.comm, once imported
_module: Any = None  # the loaded trtllm_comm kernel module
_import_error: str | None = None


def load() -> tuple[Any, Any] | None:
    global _comm, _module, _import_error
    if _module is not None:
        return _comm, _module
    if _import_error is not None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import flashinfer.comm as comm
            from flashinfer.comm.trtllm_ar import get_trtllm_comm_module

            module = get_trtllm_comm_module()
    except Exception as e:  # noqa: BLE001 - ImportError, JIT/load failures: all mean "not here"
        _import_error = f"{type(e).__name__}: {e}"
        return None
    _comm, _module = comm, module
    return _comm, _module


def unavailable_reason() -> str | None:
    """Why FlashInfer's kernel cannot run here (None when it can); tries the import once."""
    if load() is not None:
        return None
    return (
        f"FlashInfer's allreduce-fusion kernel is unavailable ({(_import_error or '')[:300]}); "
        "install flashinfer-python>=0.6.3"
    )


def require() -> tuple[Any, Any]:
    """`load()` where the caller needs it: RuntimeError with the reason if unavailable."""
    loaded = load()
    if loaded is None:
        raise RuntimeError(unavailable_reason())
    return loaded


def is_loaded() -> bool:
    """Whether FlashInfer was imported (without trying to import it)."""
    return _module is not None
