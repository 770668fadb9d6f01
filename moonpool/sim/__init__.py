"""Simulation runtime."""
