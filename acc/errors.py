"""Typed errors. Anything a user can cause is an AccError: the CLI prints its one line and exits 2."""


class AccError(Exception):
    """A problem with the user's input or environment, stated so the user can act on it."""

    exit_code = 2


class InputError(AccError):
    """A missing, unreadable or malformed input file or option."""


class VerificationError(AccError):
    """A rewritten graph did not compute what the model it came from computes."""

    exit_code = 3


class ToolchainError(AccError):
    """A compiler, cross compiler or device the command needs is missing or unreachable."""
