"""Running ComfyUI in-process on this machine's CPU: finding a source tree, importing it, tiny models of each
family, the testbed as a ComfyUI Flux model, and measurement scripts (used by the tests and run by hand)."""
