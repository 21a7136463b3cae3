"""Bias data: the record format, benchmark and Hub loaders, the LLM synthesizer."""
