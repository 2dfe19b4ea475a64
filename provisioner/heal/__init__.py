"""The remediation loop (issue 24): from a broken node back to service, or to RMA.

``remediate_nodes`` (``gpuctl monitor --remediate``, ``gpuctl remediate NODE``) drives the
pure core of ``provisioner.remediate`` (policy, planner, breaker, record, RMA hook) with
the steps that reach nodes: the scheduler's drain through the handle's listeners, the
rungs over SSH and the BMC, the scan and the burn-in."""
