"""speechmtp: a streaming speech-LM synthesis engine with multi-token-prediction heads."""

__version__ = "0.1.0"
