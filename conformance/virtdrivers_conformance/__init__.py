"""The virtdrivers conformance suite."""
