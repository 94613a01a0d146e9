"""Tasks: one application each (data, model construction, loss, metrics, figures) for the one trainer."""
