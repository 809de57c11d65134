"""Cargohold's entry layer: the `cargohold` command, the dev launcher, the admin client.

It sits above `node/` and `gateway/` (it starts them) and above `cargohold/` (the shared
domain both use); nothing below imports it. docs/packaging.md explains the layers and
the package names.
"""
