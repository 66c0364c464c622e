"""Errors that reach the user as one clear line (exit code 2), never a traceback."""


class CodirayError(Exception):
    """Base for errors the CLI reports as `codiray: error: <message>` with exit code 2."""

    exit_code = 2


class ConfigError(CodirayError):
    """A config file, key or value is wrong; the message names the file, the key and the problem."""

    def __init__(self, source: str, key: str, problem: str):
        self.source, self.key, self.problem = source, key, problem
        where = f"{source}: key '{key}'" if key else source
        super().__init__(f"{where}: {problem}")


class UsageError(CodirayError):
    """The command line itself is wrong (missing file, bad flag value)."""


class JobFailed(CodirayError):
    """A job ran and failed (training error, failed Ray job): exit code 1."""

    exit_code = 1
