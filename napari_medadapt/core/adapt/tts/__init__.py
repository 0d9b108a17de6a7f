"""TTS keypoint feature muting: positive/negative keypoints choose the feature channels to keep. ``run``: over a
volume; ``slices``: per slice with cached features; ``live``: kept up to date as keypoints change; ``engine``,
``select``, ``muting``, ``classify``: the network taps, the channel choice and the muting; ``artifacts``: painted
artifacts of the demonstration model."""
