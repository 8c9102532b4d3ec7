"""Layer 7: pipelines of stages, the cache of finished stages (the world's models included),
the MPO split and the ExPO search (``../shared/STYLE.md``, layers)."""
