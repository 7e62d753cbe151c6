"""The trace API in one import: the event model (`arfuse.audit.events`), the reader
(`arfuse.audit.reader`) and the slimming policy (`arfuse.audit.slim`) live in their own
modules; this one re-exports their public names for `from arfuse.audit.trace import ...`."""

from arfuse.audit.events import (  # noqa: F401
    AOT_GRAPHS,
    GRAPH_KINDS,
    Artifact,
    ChromiumEvent,
    CompilationMetrics,
    CompileId,
    CreateSymbol,
    CreateUnbackedSymbol,
    DynamoStart,
    Event,
    Frame,
    GraphDump,
    GuardAdded,
    GuardAddedFast,
    MalformedLine,
    StackEvent,
    SymbolicShapeSpecialization,
    Trace,
    UnknownEvent,
)
from arfuse.audit.reader import (  # noqa: F401
    MALFORMED_KEPT,
    MAX_LINE,
    TraceFormatError,
    TraceReadError,
    open_trace,
    parse_bytes,
    parse_file,
    parse_stream,
    read_bytes,
    trace_files,
)
from arfuse.audit.slim import Policy, policy_for  # noqa: F401
