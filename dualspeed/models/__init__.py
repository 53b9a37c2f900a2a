"""Models: the LLaVA wrapper (llava.py: features -> projector -> VTP -> isolator -> splice -> LLM), how fast
mode prunes (prune.py), the mode isolator (isolator.py), the side signals VTP methods read (signals.py) and
CLIP's text tower for one of them (clip_text.py), p-MoD layers (pmod.py), PyramidDrop's staged
dropping (pdrop.py), building and loading (build.py),
checkpoints and exports (checkpoint.py, hf_files.py), and the analytic FLOPs model (flops.py).
"""
