"""PyTorch definitions and strict, safe checkpoint loaders for every network latentmuse runs.

Each model module exposes the same small surface (diffusers' "a model is a config plus weights"):

* ``full_config()`` / ``tiny_config()``: the released architecture (the default everywhere) and a
  small one with the same structure for fast tests;
* ``build(config=None)``: the module, randomly initialised (wrap in ``build_on_meta`` for structure);
* ``load(path, config=None, *, dtype=None, device=None)``: build on meta, read the official file
  safely, load strictly, return the module in eval mode.
"""
