"""Load tools behind ``hvsock bench`` and ``hvsock stress``: library functions that
return results and report progress through callbacks; they never print."""
