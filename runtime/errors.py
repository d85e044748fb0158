"""Exception types shared by the reader, the importer and the session."""


class QrtFormatError(ValueError):
    """A .qrt file (or a graph about to be written to one) is malformed.

    The message names what is wrong and where (file, tensor, node or value), so a user can
    tell a truncated download from a file written by a newer qrt."""


class UnsupportedModelError(ValueError):
    """The importer met ops or constructs qrt cannot represent; the message lists all of them."""
