"""Built-in examples: a tensor-parallel Llama-style decoder (used by tests, the README and
`arfuse audit` with no target) and an HF-style decoder layer for DTensor tensor parallelism."""

from arfuse.examples.tp_decoder import RMSNorm, TPDecoder, build_tp_decoder

__all__ = ["RMSNorm", "TPDecoder", "build_tp_decoder"]
