"""lmms-eval integration: the `dualspeed_llava` model (entry point) and the synthetic tasks."""
