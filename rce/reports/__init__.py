"""Reports: the detection tables and figures (Tables 2, 4, 5, ROC curves, t-SNE)."""
