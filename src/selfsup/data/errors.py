"""The error of input a user got wrong (a data path, a file, a split); the message is one line meant for them."""


class DataError(ValueError):
    """A data path the user got wrong; the message is one line meant for them."""
