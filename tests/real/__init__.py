"""Tests over real loopback TCP (marked ``real_network``)."""
