"""The jobs users run: train, tune, evaluate, export, serve; config loading and tracking."""
