"""mnist-serve: a TF-Serving-compatible model server for machines without Docker.

It hosts the SavedModels under one or more base paths with TensorFlow itself and answers the
official ``tensorflow.serving`` gRPC services and the TF Serving REST API (see docs/model-server.md).
"""
