"""User-facing errors.

Every problem a user can fix (a wrong file, a missing modality, a missing checkpoint, ...) is raised
as a :class:`MedAdaptError` subclass whose message says what is wrong and what to do. The CLI prints
the message without a traceback; the docks show it as a napari notification.
"""


class MedAdaptError(Exception):
    """Base class of errors whose message is meant for the user."""


class VolumeError(MedAdaptError):
    """A volume file or array that cannot be used as given."""


class ModelError(MedAdaptError):
    """A model, weight file or model card that cannot be used as given."""


class PromptError(MedAdaptError):
    """Prompts or keypoints that cannot be used (outside the image or slice, malformed, empty)."""
