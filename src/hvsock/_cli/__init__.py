"""The ``hvsock`` command: a thin shell over the library."""
