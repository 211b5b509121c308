"""Key/value exchange: Hyper-V KVP pools, and the same exchange over vsock elsewhere."""
