"""The lab: simulated GPU nodes on this machine, each a real sshd in its own namespaces.

Nothing in the real pipeline imports this package; the lab only produces machines
that the real pipeline then scans, provisions and burns in over SSH.
"""
