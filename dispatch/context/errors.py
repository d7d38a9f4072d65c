"""The one exception phase 0 raises."""


class ContextGatheringError(Exception):
    """Phase 0 cannot produce any context: bad workspace path, or every retriever failed.

    The runner treats it as the guide says: a ⚠ line, the error in the
    PhaseResult, and phase 3 running without context.  A single retriever failing
    among several is not this error; it lands in ``GlobalContext.errors``.
    """
