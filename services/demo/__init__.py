"""`make demo`: the product on its own data directory with a generated shop loaded.

shop.py generates the shop (seeded, deterministic Segment messages); __main__.py starts the
gateway, loads the shop once through `funnelstream import` and keeps serving.
"""
