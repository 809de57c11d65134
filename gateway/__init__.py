"""The stateless HTTP gateway: OCI Distribution API `/v2/` over the storage cluster."""
