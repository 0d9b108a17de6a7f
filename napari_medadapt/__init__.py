"""napari-medadapt: segment medical volumes interactively and adapt AI models to your own scans.

Importing this package is cheap: it never imports torch, napari or Qt. Heavy modules load lazily
when a dock opens or a command runs.
"""

__version__ = "0.3.3"
