"""Plotting functions: result objects and metrics in, plotly figures out (no state, no Panel)."""
