"""A stage's life (lifecycle), the registry of stage kinds, artifact keys and hooks."""
