"""The pipeline as stages: data -> plan -> train -> export -> validate -> promote (run.py chains them).

Each stage takes narrow inputs and returns what it wrote on disk, so a rerun can pick up after the
last finished one (resume.py). Nothing here prints: stages tell a Reporter (reporter.py), which the
CLI draws with rich and a notebook can leave silent.
"""
