"""File copy between host and VM: the service (``.server``) and the client (``.client``).

Nothing is imported here, so ``hvsock cp`` (the client) loads neither the service
and its framework, nor the service the client; ``hvsock`` re-exports both lazily.
"""
