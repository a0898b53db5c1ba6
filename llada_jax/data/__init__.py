"""Data sources (LibriSpeech-layout folders, Diffusion-ASR JSON data files, tensorflow-datasets
ArrayRecord) and the grain pipeline."""
