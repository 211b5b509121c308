"""``hvsock agent``: the built-in services in one process, from one configuration."""
