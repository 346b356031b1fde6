"""Text generation behind one token-in/token-out interface (hf now; vllm and openai later)."""
