"""The model registry (models.toml + the user's own), downloads and the persistent job queue."""
