"""Test-time adaptation of models to a single volume: BN-KL/Tent (tta) and keypoint feature muting (tts)."""
