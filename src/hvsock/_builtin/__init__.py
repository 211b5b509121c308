"""The integration services hvsock ships, built on the service framework."""
