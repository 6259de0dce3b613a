"""The one exception type that the command line turns into a clear message and a non-zero exit."""


class FairalError(Exception):
    """A problem with the user's input or settings, stated so that it can be fixed."""
