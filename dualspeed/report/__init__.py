"""Tables and figures of the paper, rendered from the pipeline's metrics and timing JSON."""
