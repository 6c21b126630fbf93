"""Figures and tables people read instead of JSON."""
