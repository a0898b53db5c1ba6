"""Data sources (LibriSpeech-layout folders, tensorflow-datasets ArrayRecord) and the grain
pipeline."""
