"""mlx-dm: turn D&D scenario transcripts into an on-device Dungeon Master model."""

from .cpu_blas import use_fast_cpu_blas as _use_fast_cpu_blas

__version__ = "0.1.0"

# Before anything imports mlx.core (see cpu_blas.py).
_use_fast_cpu_blas()
