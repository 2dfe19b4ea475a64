"""Node registry, import parsers and the lifecycle state machine."""
