"""asyncio: ``open_connection`` / ``start_server`` for every address kind."""
