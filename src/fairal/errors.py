"""The one exception type that the command line turns into a clear message and a non-zero exit, and the one-line
form of fairal's warnings on the command line."""

import warnings


class FairalError(Exception):
    """A problem with the user's input or settings, stated so that it can be fixed."""


class SettingError(FairalError):
    """A bad value of one named setting. Its message names the setting as a command-line option
    (``--n-subjects must be ...``); a reader of settings files catches it and names the file and the key instead."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"--{key.replace('_', '-')} {problem}")


def _one_line(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def plain_warnings() -> None:
    """Show warnings as ``warning: MESSAGE`` lines (the command line and its grid workers): the file, line and
    source line of the code that warned mean nothing to a user."""
    warnings.formatwarning = _one_line
