"""Analysis: a study's trials loaded from MLflow or records, its tables, figures and statistics. Imports no trainer."""
