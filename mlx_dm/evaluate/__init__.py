"""Evaluation of DM models on held-out scenarios, and the checks the game's app relies on."""
