"""Real-client tests: skopeo and the Docker engine against a running registry."""
