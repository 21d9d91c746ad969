"""Error types and the CLI's exit codes.

Every failure a user can cause or meet is a :class:`BertcError` with a message
that reads well on its own; the CLI prints it and exits with ``exit_code``.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1      # numeric validation failed, or an internal error
EXIT_BAD_SPEC = 2          # the spec (or the command line) is wrong
EXIT_PARITY_FAILED = 3     # a backend disagrees with the Keras reference
EXIT_EXPORT_FAILED = 4     # ONNX / TFLite export failed
EXIT_OUTPUT = 5            # the output directory cannot be written as asked, or a model file in it is damaged


class BertcError(Exception):
    exit_code = EXIT_CHECK_FAILED


class SpecError(BertcError):
    """A spec failed to load. ``problems`` holds every (json_path, message) found."""

    exit_code = EXIT_BAD_SPEC

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = list(problems)
        lines = [f"{source}: {len(self.problems)} problem(s) in the spec:"]
        lines += [f"  {path}: {msg}" for path, msg in self.problems]
        super().__init__("\n".join(lines))


class CheckFailed(BertcError):
    exit_code = EXIT_CHECK_FAILED


class ExportError(BertcError):
    exit_code = EXIT_EXPORT_FAILED


class ParityError(BertcError):
    exit_code = EXIT_PARITY_FAILED


class OutputError(BertcError):
    exit_code = EXIT_OUTPUT


class ModelFileError(OutputError):
    """A model file (model.keras) is missing, truncated or not what it claims to be."""


class TransferError(BertcError):
    exit_code = EXIT_CHECK_FAILED


class WeightsError(BertcError):
    """Trained weights cannot be read or do not fit the model; the message lists every problem."""

    exit_code = EXIT_BAD_SPEC


class UnsupportedModel(WeightsError):
    """A foreign model (config key and value named) that bertc cannot express exactly."""
