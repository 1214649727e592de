"""wvtui's training library: WebVision index and data pipeline, models, the trainer,
checkpoints, run logs and telemetry. It never imports a user interface."""
