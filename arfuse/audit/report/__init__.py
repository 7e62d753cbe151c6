"""Renderings of a `Report`, one module per format, plus the baseline and the HTML view."""
