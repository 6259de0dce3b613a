"""The one exception type that the command line turns into a clear message and a non-zero exit."""


class FairalError(Exception):
    """A problem with the user's input or settings, stated so that it can be fixed."""


class SettingError(FairalError):
    """A bad value of one named setting. Its message names the setting as a command-line option
    (``--n-subjects must be ...``); a reader of settings files catches it and names the file and the key instead."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"--{key.replace('_', '-')} {problem}")
