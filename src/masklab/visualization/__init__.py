"""Overlays, palettes and plots for people to look at."""
