"""The demo: its config, the rescoring report and the paired bootstrap."""
