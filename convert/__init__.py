"""kiln converter: Hugging Face checkpoints to GGUF."""
__version__ = "0.1.0"

import logging as _logging

_logging.getLogger(__name__).addHandler(_logging.NullHandler())
