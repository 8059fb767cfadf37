"""User-facing errors: one line that says what was wrong and what is accepted.

The CLI prints ``str(error)`` of an :class:`LgmsError` without a traceback and
exits non-zero; the widgets show it as a napari notification.
"""


class LgmsError(Exception):
    """Base of every error meant for a user rather than a developer."""


class InputError(LgmsError, ValueError):
    """An image, mask or argument the code cannot take (shape, dtype, values, channels)."""


class ImageReadError(LgmsError, ValueError):
    """A file that is not a readable image or volume."""


class OutputError(LgmsError, OSError):
    """A destination that cannot be written."""
