"""SSH to nodes: one entry point (:func:`run_on_node`) with a strict host-key policy."""
