"""Pure compute for napari-medadapt: volumes, models, adaptation methods, metrics.

Nothing under ``napari_medadapt.core`` imports napari, Qt or magicgui (an import-linter contract
enforces it), so every capability is usable from scripts, notebooks and the ``medadapt`` CLI.
"""
