"""A compact GRPO loop against any reward function with the TRL signature."""
