"""The per-vCenter runtime: engines, their registry, the change queue (no Kopf)."""
