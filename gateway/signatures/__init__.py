"""Signed images: cosign-format signatures and the pull policy that requires them."""
