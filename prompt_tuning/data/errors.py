"""The data package's error: bad data input, one line saying what to fix."""


class DataError(ValueError):
  """Unknown task, empty dataset and other data problems; says what to fix."""
