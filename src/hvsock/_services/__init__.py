"""Built-in services and their clients, made with the service framework."""
