"""Provisioning: inventory rendering, node locks, the ansible-runner driver."""
