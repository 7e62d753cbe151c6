"""Reading torch's structured compile logs: records, the reader, log sources, what a streamed
trace keeps. The one package that knows torch's record kinds and artifact names; it imports
nothing above it (only `arfuse.audit.options` and torch-free arfuse modules)."""
