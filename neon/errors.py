"""The one exception type users see: a message that says what is wrong and what to do."""


class NeonError(Exception):
    """A user-facing error: bad input, missing file, mismatched checkpoint.

    The command line prints its message on one line and exits non-zero, without a traceback.
    """
