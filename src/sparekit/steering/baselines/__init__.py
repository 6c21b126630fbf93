"""Baseline steering methods; importing this package registers them."""
