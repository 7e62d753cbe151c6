"""arfuse: fuse all_reduce + residual add + RMSNorm (+FP8) under torch.compile, and prove the
compiled model stays dynamic in num_tokens.

    fusion = arfuse.AllReduceFusionPass()            # optional config=arfuse.FusionConfig(...)
    compiled = torch.compile(model, options={"post_grad_custom_post_pass": fusion})
    fusion.num_matches
"""

from arfuse import ops  # registers the arfuse:: ops
from arfuse.config import FusionConfig
from arfuse.fusion import AllReduceFusionPass
from arfuse.patterns.spec import FusionSpec, all_specs
from arfuse.ranges import compile

__version__ = "0.1.0"

__all__ = ["AllReduceFusionPass", "FusionConfig", "FusionSpec", "all_specs", "compile", "ops"]
