"""DualSpeed reproduction harness."""
