"""Adapters that give real third-party SGD-family optimizers torch.optim.SGD's constructor, in
the configuration where each package claims to equal SGD, so `conformance run` checks the claim.

Each module imports its package (an optional install: see README.md here); this one imports
none of them. `python -m examples.third_party.check_all` runs the suite on all four.
"""
