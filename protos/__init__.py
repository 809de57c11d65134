"""gRPC contracts (registry.proto) and their generated stubs (make protos)."""
