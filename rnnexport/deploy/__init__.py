"""Deployment targets: one module per target runtime, each writing a folder that runs there as it is."""
