"""The suite's error classes, one per kind of bad input; all are ValueErrors.

Every script ends on a ValueError with one 'error: ...' line (rce.flags.strict), so a new
kind of bad input needs no new handler.
"""


class DataError(ValueError):
  """A data file that is missing, unreadable, truncated or of the wrong kind."""


class ResultsError(ValueError):
  """A result folder that is missing, incomplete, stale, mixed or corrupt."""


class CheckpointError(ValueError):
  """A checkpoint that is missing, non-finite, or does not fit the model asked for."""
