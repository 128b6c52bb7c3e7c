"""kiln converter: Hugging Face checkpoints to GGUF."""
