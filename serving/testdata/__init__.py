"""Test models written on demand (never downloaded): equivalents of TF Serving's own test SavedModels."""
