"""The pipeline's decisions, apart from the CLI that prints them."""
