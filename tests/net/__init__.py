"""Tests of moonpool.net, plus the stream conformance checks shared with tests/real."""
