"""User-facing errors.

Every error a user can cause (bad data, bad config, an unusable workdir) is raised as a
:class:`JaxclustError` with one clear sentence. ``bin/train`` prints that sentence and exits
non-zero instead of showing a traceback from deep inside XLA.
"""


class JaxclustError(Exception):
  """Base class of the errors a user can fix; the message is one sentence."""


class DataError(JaxclustError, ValueError):
  """A dataset is missing, malformed, or holds values the algorithms cannot use."""


class ConfigError(JaxclustError, ValueError):
  """A configuration value is unknown or out of range."""


class CheckpointError(JaxclustError):
  """A workdir or checkpoint cannot be used (unwritable, corrupted, another config)."""


class TrainingError(JaxclustError, FloatingPointError):
  """Training diverged (a loss became NaN or inf); the last good checkpoint is kept."""
