"""Data sources (LibriSpeech-layout folders, Diffusion-ASR JSON data files, tensorflow-datasets
ArrayRecord, audio files in any layout) and the grain pipeline."""
