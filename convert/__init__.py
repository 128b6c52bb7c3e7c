"""kiln converter: Hugging Face checkpoints to GGUF."""
__version__ = "0.1.0"
