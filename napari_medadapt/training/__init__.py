"""Reproducible training of the bundled models (``medadapt train``)."""
