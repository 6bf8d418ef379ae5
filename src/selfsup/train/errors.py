"""The error of a run that cannot go on: one line that says why and what to try (the CLI prints it alone)."""


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what to try."""
