"""Who may use the registry: authentication modes (`[auth]` in the config), the built-in
token service and the checks every `/v2/` request passes (docs/security.md)."""
