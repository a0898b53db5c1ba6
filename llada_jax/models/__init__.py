"""The model: Whisper encoder, window Q-Former, LLaDA / LLaMA, layers, configs,
checkpoints."""
