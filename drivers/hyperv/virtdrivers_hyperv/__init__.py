"""Hyper-V backend for virtdrivers."""
