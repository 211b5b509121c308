"""What every server shares (ServiceHost, Relay, the bench server): peers and allow rules,
readiness, stop and signals."""
