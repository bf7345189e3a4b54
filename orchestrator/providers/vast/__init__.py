"""Vast.ai: a thin REST client (:mod:`.client`) and the provider that maps it to our interface (:mod:`.provider`)."""
