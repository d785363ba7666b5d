"""The one exception type of the analysis package."""


class AnalysisError(Exception):
    """Bad input to the analysis (no records, unknown variant, bad option): one clear message.

    The `flowarena` command prints the message and exits with code 2.
    """
