"""The service framework: declare a service once, host several, framed messages."""
