"""Issue 6, "Prove it survives": crash, outage, store faults, hostile input.

Run alone with `pytest -m reliability`; bench/reliability.py runs the long versions.
"""
