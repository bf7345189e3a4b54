"""Fakes that speak real protocols (the Vast.ai API) for tests."""
