"""The paper's grid: its variants and points (variants.py), the run config of each stage of a point
(recipe.py), and the checks that run before Snakemake plans a job (plan_check.py).

Read by workflow/rules/*.smk at plan time: nothing here imports the model, the trainer or the image generator.
"""
