"""The stages of one continual update: plain functions, each with a thin Prefect task around it."""
