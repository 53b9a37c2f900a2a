"""Pretraining of the tiny stand-ins for CLIP and Vicuna, each alone (`python -m dualspeed.train.standin`)."""
