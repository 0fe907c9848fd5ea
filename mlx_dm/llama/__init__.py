"""The llama.cpp runtime at the bottom of mlx-dm: how it is built, where its converter comes from."""
