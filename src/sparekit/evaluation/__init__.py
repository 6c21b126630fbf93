"""Generation, metrics and the evaluation harness."""
