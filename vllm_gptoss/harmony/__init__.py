"""Harmony parsing, reasoning effort and their hook into vLLM's OpenAI server (see README.md here).

Imports nothing: `serving.register()` is what the plugin entry point calls.
"""
