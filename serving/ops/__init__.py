"""`mnist-models`: model version operations against TF Serving or mnist-serve.

The model config file is the source of truth (TF Serving has no RPC that reads its config back): each change
rewrites it atomically, then applies it with ModelService/HandleReloadConfigRequest.
"""
