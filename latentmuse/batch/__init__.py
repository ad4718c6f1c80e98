"""Many clips: job lists, resumable local batches and scale-out on Ray (docs/SCALE.md)."""
