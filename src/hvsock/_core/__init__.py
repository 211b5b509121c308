"""The pure core: addresses, ids and protocol parsers. Nothing here does I/O."""
