"""mlx-dm: turn D&D scenario transcripts into an on-device Dungeon Master model."""

__version__ = "0.1.0"
