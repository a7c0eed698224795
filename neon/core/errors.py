"""The one exception type users see: a message that says what is wrong and what to do; `user_error` tells it
(and a config value left unset) from a bug."""

from __future__ import annotations

import re


class NeonError(Exception):
    """A user-facing error: bad input, missing file, mismatched checkpoint.

    The command line prints its message on one line and exits non-zero, without a traceback.
    """


def user_error(exc: BaseException) -> str | None:
    """The one-line message for an error the user can fix, None for a bug (which keeps its traceback)."""
    from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

    if isinstance(exc, NeonError):
        return str(exc)
    if isinstance(exc, (MissingMandatoryValue, InterpolationToMissingValueError)):
        # the key that is missing, also when another key refers to it (model.checkpoint: ${model.pretrained})
        named = re.search(r"Missing mandatory value: ([\w.]+)", str(exc))
        key = named.group(1) if named else (getattr(exc, "full_key", "") or str(exc))
        return f"{key} must be set on the command line (e.g. {key}=PATH)"
    return None
