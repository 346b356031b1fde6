"""Reading experiments back: sweep summaries, scaling plots and training curves from MLflow runs."""
