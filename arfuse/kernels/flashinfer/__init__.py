"""GPU backend of the fused ops: FlashInfer's TensorRT-LLM allreduce-fusion kernel.

    fused op (CUDA input) -> backend.backend(FusedArgs)
        plan.py       which strategy, per call, on host data (no sync, no guard):
                      one-shot / two-shot within the thresholds of the op's FusionPolicy (the
                      pass's, by digest), else unfused (reason logged once)
        workspace.py  the CUDA IPC workspace, created collectively on first need
        kernel.py     one launch of the kernel into preallocated outputs
        unfused.py    NCCL allreduce in place + one Triton add+RMSNorm(+FP8) kernel
        ../../settings.py  what the environment forced (strategy, two-shot switch, PDL)
        library.py    FlashInfer, imported lazily

The choice happens inside the opaque op at run time, so the compiled graph has no Python branch
on num_tokens and gets no guard. The unfused path runs when FlashInfer is missing, the GPU is
not SM90/SM100, the world size is not 2/4/8, hidden % 8 != 0, the dtype is float32, the input
exceeds the workspace or the fusion threshold, a tensor is misaligned, or a workspace would
have to be created during CUDA-graph capture (create it first: one eager call or `prepare()`).

Importing this package on CPU touches neither FlashInfer nor CUDA.
"""

from __future__ import annotations

from arfuse.kernels.flashinfer.backend import backend, prepare
from arfuse.kernels.flashinfer.plan import choose_strategy, fallback_reasons, stats
from arfuse.kernels.flashinfer.workspace import Workspace, create_workspace, release_workspaces
from arfuse.settings import force_strategy, forced_strategy, settings

__all__ = [
    "Workspace",
    "backend",
    "choose_strategy",
    "create_workspace",
    "fallback_reasons",
    "force_strategy",
    "forced_strategy",
    "prepare",
    "release_workspaces",
    "settings",
    "stats",
]
