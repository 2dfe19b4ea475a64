"""gpuctl and a live Slurm: the hand-off, state sync both ways, the smoke job."""
