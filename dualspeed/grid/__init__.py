"""The paper's grid: its variants and points (variants.py), the run config of each stage of a point
(recipe.py), the checks that run before Snakemake plans a job (plan_check.py, plan_data.py), the folders a grid
writes (folders.py), and `python -m dualspeed.grid` (__main__.py: any point's run config).

Read by workflow/rules/*.smk at plan time: nothing here imports the model, the trainer or the image generator.
"""
