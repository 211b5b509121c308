"""Real-kernel tier: AF_VSOCK through vsock_loopback, run inside the QEMU test VM."""
