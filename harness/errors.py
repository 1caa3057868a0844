"""Errors meant for users: one line saying what is wrong, where, and what to do.

The CLI turns every ``HarnessError`` into that one line and exit code 2; anything else is a
bug in the harness or a plugin, reported as such.
"""

from __future__ import annotations


class HarnessError(Exception):
    """A problem with the user's input (suite, arguments, files, plugins, models)."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}; {self.hint}"
        return self.message


class SuiteError(HarnessError):
    """An invalid suite: names the file, the line and the field."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None, hint: str | None = None):
        self.file = file
        self.line = line
        self.field = field
        self.detail = message
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        what = f"{field}: " if field else ""
        super().__init__(f"{where}{what}{message}", hint=hint)


class PluginError(HarnessError):
    """An unknown, duplicate or broken plugin."""


class DataError(HarnessError):
    """A dataset that cannot be found, read or used."""


class ModelError(HarnessError):
    """A model that cannot be built or loaded, or that misbehaves (NaN logits, wrong shape)."""


class ParamError(HarnessError):
    """A plugin parameter with a bad value; raised by plugin constructors.

    ``param`` names the offending parameter so the suite loader can point at its line.
    """

    def __init__(self, param: str, message: str, *, hint: str | None = None):
        self.param = param
        super().__init__(message, hint=hint)


class PluginCrash(PluginError):
    """A plugin (or the code it calls, such as a model factory) raised an exception of its
    own, ``SystemExit`` included: a bug in that plugin. Names the plugin and its package;
    ``original`` is the exception, whose traceback goes to the run folder's errors.log."""

    def __init__(self, message: str, original: BaseException, *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.original = original


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM) arrived: the run saves what finished and exits with
    128 + the signal's number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int):
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum
