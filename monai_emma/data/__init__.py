"""Datasets and sample data."""
