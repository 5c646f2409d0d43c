"""The local AI node for development and tests: llama.cpp's server with an Ollama-compatible front.

Run it with `.venv/bin/python -m devnode` from the repository root, or through `scripts/ai-node.sh`.

- `__main__`: the entry point; fetches the model, starts llama.cpp (the `xllamacpp` wheel) and the front.
- `ollama_front`: the Ollama API, translated to llama.cpp's OpenAI-compatible one.
- `gguf`: reads metadata from the model file's header.

Standard library (and xllamacpp) only, plus `nodeclient`, which imports no Django: nothing here needs
the platform's settings or database.
"""
