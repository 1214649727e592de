"""wvtui: a terminal console (and a headless mode) for training WebVision classifiers."""

__version__ = "0.1.0"
