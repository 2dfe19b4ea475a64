"""Hardware scan: run the probe on nodes, store snapshots, flag faults and drift."""
