"""Tooling shared by the simulators and embedded endpoints that backend packages ship.

Nothing here is imported by the contract itself; backends use it to stand up
real peers on 127.0.0.1 for their own tests and for users' tests.
"""
