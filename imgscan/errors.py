"""The one error family a user can cause: the CLI prints it as one line and exits 2."""


class ImgscanError(Exception):
    """A bad reference, a corrupt or hostile image, a digest mismatch: never a traceback."""
