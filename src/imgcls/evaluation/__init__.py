"""The evaluation report: numbers (``metrics``) and files (``report``) from gathered logits."""
