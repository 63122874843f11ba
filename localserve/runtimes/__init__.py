"""Runtimes: where an export runs (Ollama, llama-server, LM Studio, Jan, vLLM), one module each."""
