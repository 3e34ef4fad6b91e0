"""The one exception type for user errors (config, data, files)."""


class FRError(Exception):
    """A user error: the message says what is wrong and how to fix it.

    The entry points print it as one line prefixed with ``[stage k]`` and exit
    non-zero, without a traceback.
    """
