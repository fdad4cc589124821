"""Helpers shared by test modules (a test module never imports another): real servers' test
rigs, fakes for faults a real server cannot produce, and paths to the data in tests/data."""
