"""gpuctl: take bare-metal GPU servers from racked and cabled to certified."""

__version__ = "0.2.0"
