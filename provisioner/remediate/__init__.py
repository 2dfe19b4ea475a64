"""Remediation's pure core: the policy (``inventory/remediation.yml``), the planner that
picks a rung for a node's findings, the circuit breaker, the run record and the RMA site
hook. Nothing here reaches a node, Slurm or a BMC: the callers do, and hand in what they
found (``gpuctl monitor --remediate``, ``gpuctl remediate NODE``)."""
