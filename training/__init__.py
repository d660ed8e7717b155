"""MNIST training: IDX data, the Keras CNN, the evaluation report and the atomic versioned SavedModel export.

Kept free of heavy imports: `import training` must not pull in tensorflow.
"""
