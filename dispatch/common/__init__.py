"""What every phase shares and no phase owns: kinds registries, the one circuit breaker and the one
backoff for remote calls, the one HTTP/JSON client policy, the model providers, graph faults, text helpers.

Nothing here knows there are phases; it imports only ``models``/``errors``/``config``.  Import from the
modules themselves (``dispatch.common.backoff`` ...): this ``__init__`` stays empty so that importing one
small helper (the CLI's graph check) never loads the HTTP stack with it.
"""
