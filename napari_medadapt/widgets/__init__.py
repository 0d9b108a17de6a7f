"""Dock widgets: thin Qt views that turn layers into core calls run in the compute worker."""
