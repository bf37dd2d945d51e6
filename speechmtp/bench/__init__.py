"""Benchmarks: each module is a `speechmtp bench NAME` command with a `run_*` function returning a JSON-able dict."""
