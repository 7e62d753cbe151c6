"""Which source line made a decision: the innermost frame outside torch and arfuse.

Guards that Dynamo adds while tracing user code carry the user's line in `user_stack`; their
`stack` only shows the compiler. Guards added by code that really runs during compilation - a
custom op's fake kernel, an Inductor pattern replacement - show the deciding line in `stack`,
inner to the compiler frames, while `user_stack` stops at the call site (or is null). Guards
the compiler adds on its own have neither: the deciding line is an Inductor frame.

    attribute(event) -> Attribution(decision=Frame, by="user"|"compiler", frames=[...])
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from arfuse.audit.paths import package_path
from arfuse.audit.trace.records import Frame

# Path segments of libraries whose frames never "make the decision" for the user.
_LIBRARY = re.compile(
    r"(^|[/\\])(torch|functorch|sympy|triton|_pytest|pluggy|multiprocessing|importlib|click)[/\\]"
)
_STDLIB = re.compile(r"[/\\]lib[/\\]python3\.\d+[/\\](?!site-packages|dist-packages)")
_ARFUSE_PKG = Path(__file__).resolve().parent.parent  # .../arfuse
_ARFUSE_INSTALLED = re.compile(r"[/\\](site|dist)-packages[/\\]arfuse[/\\](?!examples[/\\])")
_TORCH = re.compile(r"(^|[/\\])torch[/\\]")
_COMPILE_ENTRY = re.compile(r"torch[/\\]_dynamo[/\\]convert_frame\.py$")
_INDUCTOR = re.compile(r"[/\\]torch[/\\]_inductor[/\\]")
# Inductor helpers that evaluate a guard on behalf of the real decision one frame out.
_INDUCTOR_PLUMBING = re.compile(r"_inductor[/\\](sizevars|virtualized|utils|pattern_matcher)\.py$")
# torch frames that only evaluate or log a guard on behalf of the frame that asked for it
_GUARD_PLUMBING = re.compile(
    r"torch[/\\](fx[/\\]experimental[/\\](symbolic_shapes|sym_node|recording)\.py|_logging[/\\]|"
    r"__init__\.py$|_guards\.py$|utils[/\\]_stats\.py$|_subclasses[/\\]fake_tensor\.py$)"
)


def _package_path(path: str) -> str:
    """An installed file is classified by its path inside site-packages: an install prefix may
    itself contain `torch/` (`/opt/torch/.venv/...` on the GPU image), which must not turn
    every installed package into torch."""
    return package_path(path) or path


def short_path(path: str) -> str:
    """How a message names a file: from its package (`torch/_inductor/ir.py`), else its name."""
    pkg = _package_path(path)
    return pkg if pkg != path else Path(path).name


@functools.lru_cache(maxsize=65536)
def is_framework(path: str) -> bool:
    """True for frames of torch, arfuse's own machinery, the stdlib and generated code."""
    if not path or path.startswith("<"):
        return True
    if (
        _LIBRARY.search(_package_path(path))
        or _STDLIB.search(path)
        or _ARFUSE_INSTALLED.search(path)
    ):
        return True
    try:
        rel = Path(path).resolve().relative_to(_ARFUSE_PKG)
    except (ValueError, OSError):
        return False
    return not rel.parts or rel.parts[0] != "examples"


@dataclass(frozen=True)
class Attribution:
    decision: Frame
    by: str  # "user": a line of model code decided; "compiler": torch itself did
    frames: tuple[Frame, ...]  # decision first, then the model call site(s), innermost first


def _user_frames(frames: tuple[Frame, ...] | None) -> list[Frame]:
    return [f for f in (frames or ()) if not is_framework(f.filename)]


def attribute(
    user_stack: tuple[Frame, ...] | None, stack: tuple[Frame, ...] | None
) -> Attribution | None:
    """Attribute one guard/specialization event; None when it has no frames at all."""
    stack = stack or ()
    call_sites = _user_frames(user_stack)[::-1]  # innermost first
    decision: Frame | None = None
    by = "user"
    # 1. Code that really ran inside the compiler (fake kernels, pattern replacements): a
    #    non-framework frame inner to the first torch frame of `stack` (frames before it are
    #    the caller's: a script, a test function under pytest, the audit driver).
    #    Inside means after the innermost Dynamo compile entry: after a graph break, the
    #    model's own frame (at the break) is a real caller of the resumed frame being compiled.
    entries = [i for i, f in enumerate(stack) if _COMPILE_ENTRY.search(f.filename)]
    first_fw = (
        entries[-1]
        if entries
        else next(
            (i for i, f in enumerate(stack) if _TORCH.search(_package_path(f.filename))), None
        )
    )
    if first_fw is not None:
        inner = [f for f in stack[first_fw:] if not is_framework(f.filename)]
        if inner:
            decision = inner[-1]
    # 2. The compiler itself (an Inductor frame, and Dynamo was not tracing user code).
    if decision is None and any(_INDUCTOR.search(f.filename) for f in stack):
        inductor = [f for f in stack if _INDUCTOR.search(f.filename)]
        real = [f for f in inductor if not _INDUCTOR_PLUMBING.search(f.filename)]
        decision, by = (real or inductor)[-1], "compiler"
    # 3. Dynamo tracing user code: the innermost user frame of `user_stack`.
    if decision is None and call_sites:
        decision = call_sites[0]
    # 4. Another part of the compiler (AOTAutograd, decompositions): its innermost real frame.
    if decision is None:
        torch_frames = [
            f for f in stack if is_framework(f.filename) and not _GUARD_PLUMBING.search(f.filename)
        ]
        if not torch_frames:
            return None
        decision, by = torch_frames[-1], "compiler"
    frames = [decision] + [f for f in call_sites if f != decision]
    return Attribution(decision, by, tuple(frames))
