"""Model loading, pre/post-processing, labels and bundles."""
