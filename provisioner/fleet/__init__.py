"""The fleet once nodes are certified: lifecycle operations, pools, status, hand-off."""
