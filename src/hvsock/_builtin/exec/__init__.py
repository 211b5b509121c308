"""Remote exec: the agent's service (server.py) and its clients (client.py)."""
