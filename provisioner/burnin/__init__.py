"""Burn-in: the node-side agent (torch; CUDA/NCCL or CPU/gloo) and what runs it."""
