"""kiln runtime: chat with GGUF models through llama.cpp."""
