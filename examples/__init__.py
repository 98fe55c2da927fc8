"""Examples; a package so that `conformance run --optimizer examples.third_party.<module>:<Class>`
imports from the repository root."""
