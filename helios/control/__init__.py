"""The control plane: tenants, policies and API keys, kept in a key-value store."""
