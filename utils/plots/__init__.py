"""Plots written into run folders, one module per area (data, metrics, training, evolution)."""
