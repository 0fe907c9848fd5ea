"""One exception hierarchy: every error carries a message, a recovery hint and an exit code.

The CLI prints ``message`` and ``hint`` without a traceback; the run log keeps the traceback.
Exit codes are distinct per failure class so scripts (and `pnpm run train`) can tell them apart.
"""

from __future__ import annotations


class MlxDmError(Exception):
    exit_code = 1
    kind = "error"

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class ConfigError(MlxDmError):
    exit_code = 2
    kind = "configuration error"


class DataError(MlxDmError):
    exit_code = 3
    kind = "data error"


class ModelError(MlxDmError):
    exit_code = 4
    kind = "model error"


class TrainingError(MlxDmError):
    exit_code = 5
    kind = "training error"


class ExportError(MlxDmError):
    exit_code = 6
    kind = "export error"


class ValidationFailed(MlxDmError):
    exit_code = 7
    kind = "validation failed"


class EnvironmentProblem(MlxDmError):
    exit_code = 8
    kind = "environment problem"


class ProjectBusy(MlxDmError):
    exit_code = 10
    kind = "project busy"


class NativeCrash(MlxDmError):
    """Native code (llama.cpp, MLX) killed the process with a signal; the exit code is 128 + the signal."""

    kind = "native crash"

    def __init__(self, message: str, hint: str = "", signal_number: int = 0) -> None:
        super().__init__(message, hint)
        self.exit_code = 128 + signal_number
