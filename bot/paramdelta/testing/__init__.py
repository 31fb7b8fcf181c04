"""Test doubles shipped with the package: tiny checkpoints, a loopback fake Hub, a fake GitHub.

They live in the package (not in tests/) because `paramdelta demo` and the
benchmarks use them too.
"""
